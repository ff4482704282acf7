"""The ``shadowd`` command line: parses arguments and calls the library; nothing more."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from shadowd import __version__
from shadowd.config import ConfigError, load_config
from shadowd.config_loader import check_environment
from shadowd.errors import AdminUnreachable

DEFAULT_ADMIN_URL = "http://127.0.0.1:8471"


def _run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
        check_environment(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    # Imported once the config holds: a refusal costs no more than check-config does.
    from shadowd.logs import setup_logging
    from shadowd.supervisor import Supervisor

    setup_logging(config.logging.level, config.logging.format)
    _install_uvloop()

    async def main() -> None:
        supervisor = Supervisor(config)
        await supervisor.start()
        gc.freeze()  # started: a full collection need not walk the modules (see shadowd.worker)
        await supervisor.run_until_signalled()

    try:
        asyncio.run(main())
    except ConfigError as exc:  # found only when starting (e.g. the token file changed)
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:  # typically: the listen address is taken
        print(f"shadowd: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
        check_environment(config)  # the checks ``run`` makes, so the two agree
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    targets = ", ".join(f"{t.name}={t.url}" for t in (config.primary, *config.mirror_targets))
    print(f"{args.file}: ok ({config.ingress.mode} mode on {config.ingress.listen}; {targets})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from shadowd.report import render_samples, render_table

    if args.samples:
        try:
            samples = admin_get(args.url, f"/api/v1/endpoints/{args.samples}/samples", _token(args))
        except AdminUnreachable as exc:
            print(f"shadowd report: {exc}", file=sys.stderr)
            return 3
        if args.json:
            sys.stdout.write(orjson.dumps(samples, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            sys.stdout.write(render_samples(samples) + "\n")
        return 0
    try:
        report = admin_get(args.url, "/api/v1/report" + _scope(args), _token(args))
    except AdminUnreachable as exc:
        print(f"shadowd report: {exc}", file=sys.stderr)
        return 3
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_table(report) + "\n")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from shadowd.capture.inspect import inspect_capture, iter_records_json, render_inspect
    from shadowd.errors import CaptureError

    try:
        if args.records:
            for line in iter_records_json(args.capture):
                sys.stdout.write(line + "\n")
            return 0
        summary = inspect_capture(args.capture)
    except CaptureError as exc:
        print(f"shadowd inspect: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `shadowd inspect --records | head`
        return 0
    if args.json:
        sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(render_inspect(summary))
    return 0


def _replay(args: argparse.Namespace) -> int:
    from shadowd.errors import CaptureError
    from shadowd.ingress.descriptors import raise_open_files_limit
    from shadowd.replay import ReplayOptions, parse_targets, render_summary
    from shadowd.replay_parallel import replay_parallel

    raise_open_files_limit()  # --concurrency connections to each target, in every sender

    try:
        targets = parse_targets(args.target)
        headers = _header_rewrites(args.header or [], targets)
        options = ReplayOptions(
            targets=targets,
            speed=args.speed,
            rate=args.rate,
            concurrency=args.concurrency,
            loop=args.loop,
            duration=args.duration,
            endpoint=args.endpoint,
            methods=frozenset(m.upper() for m in args.method or ()),
            path=args.path,
            headers=headers,
            timeout=args.timeout,
            connections=args.connections,
            diff=not args.no_diff,
            workers=args.workers,
        )
        if args.analysis_nice is not None:
            options.analysis_nice = args.analysis_nice
        options.validate()
    except ValueError as exc:
        print(f"shadowd replay: {exc}", file=sys.stderr)
        return 2
    _install_uvloop()
    try:
        summary = asyncio.run(replay_parallel(Path(args.capture), options))
    except CaptureError as exc:
        print(f"shadowd replay: {exc}", file=sys.stderr)
        return 1
    print(render_summary(summary))
    if args.json:
        try:
            Path(args.json).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        except OSError as exc:
            print(
                f"shadowd replay: cannot write {args.json}: {exc.strerror or exc}", file=sys.stderr
            )
            return 1
    return 130 if summary["interrupted"] else 0


def _header_rewrites(specs: list[str], targets: dict[str, str]) -> dict[str, tuple]:
    """``candidate:Authorization=env:STAGING_TOKEN`` → the header, read from the environment."""
    out: dict[str, list[tuple[str, str]]] = {}
    for spec in specs:
        where, sep, rest = spec.partition(":")
        name, eq, value = rest.partition("=")
        if not sep or not eq or where not in targets or not name:
            raise ValueError(
                f"--header {spec!r}: expected TARGET:Name=value (TARGET one of "
                f"{', '.join(targets)}); value may be env:VARIABLE"
            )
        if value.startswith("env:"):
            variable = value[4:]
            if variable not in os.environ:
                raise ValueError(f"--header {spec!r}: ${variable} is not set")
            value = os.environ[variable]
        out.setdefault(where, []).append((name, value))
    return {k: tuple(v) for k, v in out.items()}


VERDICT_EXIT = {"pass": 0, "fail": 1, "inconclusive": 2}


def _verdict(args: argparse.Namespace) -> int:
    """Exit 0 pass, 1 fail, 2 inconclusive, 3 could not judge."""
    try:
        token = _token(args)
        verdict = admin_get(args.url, "/api/v1/verdict" + _scope(args), token)
        report = (
            admin_get(args.url, "/api/v1/report" + _scope(args), token) if args.markdown else None
        )
    except AdminUnreachable as exc:
        print(f"shadowd verdict: could not judge: {exc}", file=sys.stderr)
        return 3
    if args.json:
        sys.stdout.write(orjson.dumps(verdict, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(f"verdict: {verdict['verdict']} ({verdict['exchanges']} exchanges)")
        for reason in verdict["reasons"]:
            print(f"  - {reason}")
    if args.markdown and report is not None:
        from shadowd.verdict.markdown import render_markdown

        samples = {}
        for endpoint in report.get("endpoints", [])[:10]:
            if endpoint.get("divergent"):
                try:
                    samples[endpoint["id"]] = admin_get(
                        args.url, f"/api/v1/endpoints/{endpoint['id']}/samples", token
                    )
                except AdminUnreachable:
                    continue
        try:
            Path(args.markdown).write_text(render_markdown(verdict, report, samples))
        except OSError as exc:
            print(
                f"shadowd verdict: cannot write {args.markdown}: {exc.strerror or exc}",
                file=sys.stderr,
            )
            return 3
        print(f"promotion report written to {args.markdown}", file=sys.stderr)
    return VERDICT_EXIT.get(verdict.get("verdict"), 3)


def _demo(args: argparse.Namespace) -> int:
    from shadowd.demo.tour import run_demo

    _install_uvloop()
    return run_demo(duration=args.duration, requests=args.requests)


def admin_get(url: str, path: str, token: str | None) -> Any:
    """GET a JSON document from a running daemon's admin API."""
    request = urllib.request.Request(url.rstrip("/") + path)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return orjson.loads(answer.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace").strip()
        if exc.code == 401:
            detail += (
                " (the token given was refused)"
                if token
                else " (give the admin token with --token-file FILE or $SHADOWD_TOKEN)"
            )
        raise AdminUnreachable(f"{url}{path} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(f"cannot reach the admin API at {url}: {reason}") from exc


def _scope(args: argparse.Namespace) -> str:
    scope = getattr(args, "scope", None)
    return f"?scope={scope}" if scope else ""


def _stream_config(args: argparse.Namespace, command: str) -> Any:
    """The config of a command that works on the [stream] (Redis); None after a message."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    if not config.stream.redis:
        print(
            f'shadowd {command}: {args.config}: stream.backend: must be "redis" '
            "(this command works on the fleet's stream)",
            file=sys.stderr,
        )
        return None
    return config


def _worker(args: argparse.Namespace) -> int:
    config = _stream_config(args, "worker")
    if config is None:
        return 2
    from shadowd.logs import setup_logging
    from shadowd.stream.worker import run_worker

    setup_logging(config.logging.level, config.logging.format)
    _install_uvloop()
    return run_worker(config, args.consumer)


def _publish(args: argparse.Namespace) -> int:
    config = _stream_config(args, "publish")
    if config is None:
        return 2
    from shadowd.errors import CaptureError
    from shadowd.stream.redis_stream import publish_capture

    try:
        count = asyncio.run(publish_capture(config.stream, Path(args.capture)))
    except CaptureError as exc:
        print(f"shadowd publish: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"shadowd publish: {config.stream.url}: {exc}", file=sys.stderr)
        return 1
    print(f"{count} records appended to {config.stream.key}")
    return 0


def _token(args: argparse.Namespace) -> str | None:
    if getattr(args, "token_file", None):
        try:
            return Path(args.token_file).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            # Nothing can be asked without it: the same outcome as an unreachable daemon.
            reason = getattr(exc, "strerror", None) or exc
            raise AdminUnreachable(f"cannot read --token-file {args.token_file}: {reason}") from exc
    return os.environ.get("SHADOWD_TOKEN") or None


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; the loop still works
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _add_admin_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("SHADOWD_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="admin API base URL (default: %(default)s, or $SHADOWD_ADMIN_URL)",
    )
    parser.add_argument(
        "--token-file", help="file holding the admin bearer token (or set $SHADOWD_TOKEN)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shadowd",
        description="Mirror production HTTP traffic to a candidate release, diff the answers, "
        "and report whether it may be promoted.",
    )
    parser.add_argument("--version", action="version", version=f"shadowd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (proxy mode: mirror, diff, admin API)")
    run.add_argument("-c", "--config", required=True, help="TOML config file")
    run.set_defaults(func=_run)

    demo = sub.add_parser(
        "demo", help="a self-contained tour on loopback: sample services, traffic, the report"
    )
    demo.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds to keep the admin API up after the report (default: until Ctrl-C)",
    )
    demo.add_argument("--requests", type=int, default=3000, help="requests to drive (default 3000)")
    demo.set_defaults(func=_demo)

    report = sub.add_parser("report", help="the running daemon's divergence report")
    _add_admin_args(report)
    report.add_argument("--json", action="store_true", help="print the JSON report")
    report.add_argument(
        "--scope",
        choices=("instance", "fleet"),
        help="this instance's view or the fleet's merged one ([stream] on Redis); "
        "default: the daemon's [stream] view",
    )
    report.add_argument(
        "--samples", metavar="ENDPOINT_ID", help="recent divergent exchanges of one endpoint"
    )
    report.set_defaults(func=_report)

    inspect = sub.add_parser("inspect", help="summarise a capture file (.shadow or GoReplay .gor)")
    inspect.add_argument("capture")
    inspect.add_argument("--records", action="store_true", help="print records as JSON lines")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(func=_inspect)

    replay = sub.add_parser(
        "replay", help="send a capture's requests to targets, compare and time the answers"
    )
    replay.add_argument("capture", help="a .shadow capture, or a GoReplay .gor / .gor.gz file")
    replay.add_argument(
        "--target",
        action="append",
        required=True,
        metavar="NAME=URL",
        help="primary=URL, candidate=URL, secondary=URL (repeatable); "
        "without primary, answers are compared with the recorded ones",
    )
    pace = replay.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed", type=float, default=1.0, help="recorded pace times X (default 1.0; open loop)"
    )
    pace.add_argument("--rate", type=float, help="fixed N requests/s (open loop, CO-corrected)")
    pace.add_argument("--concurrency", type=int, help="closed loop: N requests in flight")
    replay.add_argument("--loop", type=int, default=1, help="replay the capture N times")
    replay.add_argument("--duration", type=float, help="stop sending after S seconds")
    replay.add_argument("--endpoint", help="only endpoints matching this regex")
    replay.add_argument("--method", action="append", help="only this method (repeatable)")
    replay.add_argument("--path", help="only paths matching this regex")
    replay.add_argument(
        "--header",
        action="append",
        metavar="TARGET:Name=value",
        help="set a header on one target's requests; value env:VAR reads $VAR",
    )
    replay.add_argument("--timeout", type=float, default=10.0, help="seconds per answer")
    replay.add_argument(
        "--connections", type=int, default=256, help="connections per target (default 256)"
    )
    replay.add_argument(
        "--workers",
        type=int,
        default=0,
        help="sender processes (default: one per core); this process diffs",
    )
    replay.add_argument(
        "--analysis-nice",
        type=int,
        metavar="N",
        help=(
            "how far the comparing process steps back from the senders, 0-19 (default "
            "10): on a saturated host the comparison takes only what CPU the "
            "senders leave and counts the rest as not compared, so it never delays a send; "
            "0 compares more at the senders' expense"
        ),
    )
    replay.add_argument(
        "--no-diff",
        action="store_true",
        help="time the targets without comparing the answers (the sender's top rate)",
    )
    replay.add_argument("--json", metavar="FILE", help="write the result as JSON")
    replay.set_defaults(func=_replay)

    verdict = sub.add_parser(
        "verdict",
        help="the promotion gate: exit 0 pass, 1 fail, 2 inconclusive, 3 could not judge",
    )
    _add_admin_args(verdict)
    verdict.add_argument("--json", action="store_true", help="print the verdict JSON")
    verdict.add_argument(
        "--scope",
        choices=("instance", "fleet"),
        help="judge this instance's statistics or the fleet's merged ones",
    )
    verdict.add_argument("--markdown", metavar="FILE", help="write a promotion report")
    verdict.set_defaults(func=_verdict)

    worker = sub.add_parser(
        "worker",
        help="an analysis worker alone: reads the [stream] on Redis, publishes to the fleet",
    )
    worker.add_argument("-c", "--config", required=True, help="TOML config file")
    worker.add_argument(
        "--consumer", help="this worker's name in the group (default: [stream] consumer)"
    )
    worker.set_defaults(func=_worker)

    publish = sub.add_parser(
        "publish", help="append a capture's records to the [stream] on Redis (for the fleet)"
    )
    publish.add_argument("capture", help="a .shadow capture")
    publish.add_argument("-c", "--config", required=True, help="TOML config file")
    publish.set_defaults(func=_publish)

    check = sub.add_parser("check-config", help="validate a config file; every problem is listed")
    check.add_argument("file")
    check.set_defaults(func=_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `shadowd inspect ... | head`: the reader has what it wanted
        # Python would report the pipe again when flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
