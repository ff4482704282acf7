"""Bad configs are refused with one ``file: key: problem`` line, never a traceback, and
``check-config`` refuses exactly what ``run`` refuses (before anything listens)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from shadowd.cli import main

PRIMARY = "http://127.0.0.1:9001"
CANDIDATE = "http://127.0.0.1:9003"
SECONDARY = '[targets.secondary]\nurl = "http://127.0.0.1:9002"\n'


def config(extra: str = "", primary: str = PRIMARY, candidate: str = CANDIDATE) -> str:
    # Default listens (ingress 127.0.0.1:8470, admin 127.0.0.1:8471) unless a case sets them.
    return (
        f'[targets.primary]\nurl = "{primary}"\n[targets.candidate]\nurl = "{candidate}"\n' + extra
    )


def secondary(lines: str, url: str = "http://127.0.0.1:9002") -> str:
    return config(f'[targets.secondary]\nurl = "{url}"\n{lines}\n')


# (id, config text ({tmp} is a scratch folder), the key the one problem must name)
CASES: list[tuple[str, str, str]] = [
    (
        "answer-cut-below-kept",
        config('[mirror]\nmax_answer_bytes = "512KiB"'),
        "mirror.max_answer_bytes",
    ),
    # -- numbers that are not numbers -------------------------------------------------------
    (
        "nan-divergence",
        config("[verdict]\nmax_divergence_ratio = nan"),
        "verdict.max_divergence_ratio",
    ),
    (
        "inf-error-rate",
        config("[verdict]\nmax_error_rate_increase = inf"),
        "verdict.max_error_rate_increase",
    ),
    (
        "minus-inf-p50",
        config("[verdict]\nmax_latency_regression_p50 = -inf"),
        "verdict.max_latency_regression_p50",
    ),
    (
        "inf-p99",
        config("[verdict]\nmax_latency_regression_p99 = inf"),
        "verdict.max_latency_regression_p99",
    ),
    ("nan-significance", config("[verdict]\nsignificance = nan"), "verdict.significance"),
    (
        "nan-weight",
        config('[verdict]\nendpoint_weights = { "GET /a" = nan }'),
        "verdict.endpoint_weights",
    ),
    ("nan-sample-rate", config("[mirror]\nsample_rate = nan"), "mirror.sample_rate"),
    ("nan-noise-relative", config("[diff]\nnoise_relative = nan"), "diff.noise_relative"),
    ("inf-noise-absolute", config("[diff]\nnoise_absolute = inf"), "diff.noise_absolute"),
    (
        "nan-tolerance",
        config(
            '[[diff.rules]]\nname = "t"\nwhy = "w"\naction = "tolerance"\n'
            'path = "$.x"\nabsolute = nan'
        ),
        "diff.rules[1].absolute",
    ),
    ("nan-timeout", secondary("timeout = nan"), "targets.secondary.timeout"),
    (
        "inf-connect-timeout",
        secondary("connect_timeout = inf"),
        "targets.secondary.connect_timeout",
    ),
    ("nan-idle-timeout", config("[ingress]\nidle_timeout = nan"), "ingress.idle_timeout"),
    (
        "overflowing-duration",
        config(f'[ingress]\nidle_timeout = "{"9" * 400}s"'),
        "ingress.idle_timeout",
    ),
    (
        "overflowing-size",
        config(f'[ingress]\nmax_request_body_bytes = "{"9" * 400}KiB"'),
        "ingress.max_request_body_bytes",
    ),
    (
        "inf-capture-age",
        config('[capture]\npath = "{tmp}/c.shadow"\nmax_age = inf'),
        "capture.max_age",
    ),
    # -- header-producing values ------------------------------------------------------------
    (
        "host-header-crlf",
        secondary('host_header = "a\\r\\nX-Evil: 1"'),
        "targets.secondary.host_header",
    ),
    ("host-header-lf", secondary('host_header = "a\\nb"'), "targets.secondary.host_header"),
    ("host-header-nul", secondary('host_header = "a\\u0000b"'), "targets.secondary.host_header"),
    ("host-header-space", secondary('host_header = "a b"'), "targets.secondary.host_header"),
    ("host-header-empty", secondary('host_header = ""'), "targets.secondary.host_header"),
    ("host-header-number", secondary("host_header = 5"), "targets.secondary.host_header"),
    (
        "set-header-crlf",
        secondary('set_headers = { "X-A" = "v\\r\\nX-Evil: 1" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-header-bell",
        secondary('set_headers = { "X-A" = "v\\u0007" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-header-not-latin1",
        secondary('set_headers = { "X-A" = "\\u20ac" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-header-bad-name",
        secondary('set_headers = { "Bad Name" = "v" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-content-length",
        secondary('set_headers = { "Content-Length" = "5" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-transfer-encoding",
        secondary('set_headers = { "Transfer-Encoding" = "chunked" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-header-twice",
        secondary('set_headers = { "X-A" = "1", "x-a" = "2" }'),
        "targets.secondary.set_headers",
    ),
    (
        "set-header-number",
        secondary('set_headers = { "X-A" = 5 }'),
        "targets.secondary.set_headers",
    ),
    (
        "two-hosts",
        secondary('host_header = "a"\nset_headers = { "Host" = "b" }'),
        "targets.secondary.host_header",
    ),
    ("remove-host", secondary('remove_headers = ["host"]'), "targets.secondary.remove_headers"),
    (
        "remove-bad-name",
        secondary('remove_headers = ["bad name"]'),
        "targets.secondary.remove_headers",
    ),
    # -- URLs -------------------------------------------------------------------------------
    ("unclosed-ipv6", config(candidate="http://[::1"), "targets.candidate.url"),
    ("port-out-of-range", config(primary="http://[::1]:99999"), "targets.primary.url"),
    ("ftp-url", config(candidate="ftp://example.com"), "targets.candidate.url"),
    ("url-newline", config(candidate="http://127.0.0.1:9003/\\n"), "targets.candidate.url"),
    ("url-space", config(candidate="http://exa mple.com"), "targets.candidate.url"),
    ("url-credentials", config(candidate="http://u:p@example.com"), "targets.candidate.url"),
    ("url-query", config(candidate="http://example.com/?a=1"), "targets.candidate.url"),
    ("url-not-ascii", config(candidate="http://example.com/\\u20ac"), "targets.candidate.url"),
    # -- targets that are shadowd's own ingress (default 127.0.0.1:8470) -------------------
    ("loop-unspecified", config(candidate="http://0.0.0.0:8470"), "targets.candidate.url"),
    ("loop-localhost", config(candidate="http://localhost:8470"), "targets.candidate.url"),
    ("loop-127-other", config(candidate="http://127.5.6.7:8470"), "targets.candidate.url"),
    ("loop-ipv6-any", config(candidate="http://[::]:8470"), "targets.candidate.url"),
    ("loop-ipv6-loopback", config(candidate="http://[::1]:8470"), "targets.candidate.url"),
    ("loop-localhost-dot", config(candidate="http://localhost.:8470"), "targets.candidate.url"),
    ("loop-mapped", config(candidate="http://[::ffff:127.0.0.1]:8470"), "targets.candidate.url"),
    ("loop-decimal", config(primary="http://2130706433:8470"), "targets.primary.url"),
    ("loop-listen-any", config('[ingress]\nlisten = "0.0.0.0:9001"'), "targets.primary.url"),
    # -- capture files ----------------------------------------------------------------------
    ("capture-unknown-user", config('[capture]\npath = "~nosuchuser/c.shadow"'), "capture.path"),
    ("capture-nul", config('[capture]\npath = "{tmp}/a\\u0000b"'), "capture.path"),
    ("capture-empty-path", config('[capture]\npath = ""'), "capture.path"),
    ("token-unknown-user", config('[admin]\ntoken_file = "~nosuchuser/t"'), "admin.token_file"),
    ("capture-directory", config('[capture]\npath = "{tmp}"'), "capture.path"),
    ("capture-uncreatable", config('[capture]\npath = "/proc/nope/c.shadow"'), "capture.path"),
    (
        "capture-parent-is-file",
        config('[capture]\npath = "{tmp}/plain.txt/c.shadow"'),
        "capture.path",
    ),
    ("capture-not-a-capture", config('[capture]\npath = "{tmp}/plain.txt"'), "capture.path"),
    (
        "redact-space",
        config('[capture]\npath = "{tmp}/c.shadow"\nredact_body_fields = ["$.user name"]'),
        "capture.redact_body_fields",
    ),
    (
        "redact-double-dot",
        config('[capture]\npath = "{tmp}/c.shadow"\nredact_body_fields = ["$..x"]'),
        "capture.redact_body_fields",
    ),
    (
        "redact-no-dollar",
        config('[capture]\npath = "{tmp}/c.shadow"\nredact_body_fields = ["user"]'),
        "capture.redact_body_fields",
    ),
    # -- listen addresses -------------------------------------------------------------------
    ("listen-unresolvable", config('[ingress]\nlisten = "nosuch.invalid:8470"'), "ingress.listen"),
    ("listen-not-local", config('[ingress]\nlisten = "192.0.2.1:8470"'), "ingress.listen"),
    ("listen-port-range", config('[ingress]\nlisten = "127.0.0.1:70000"'), "ingress.listen"),
    ("admin-same-as-ingress", config('[admin]\nlisten = "127.0.0.1:8470"'), "admin.listen"),
    ("admin-overlaps-ingress", config('[admin]\nlisten = "localhost:8470"'), "admin.listen"),
    (
        "admin-on-every-address",
        config('[admin]\nlisten = "0.0.0.0:8470"\ntoken_file = "{tmp}/token"'),
        "admin.listen",
    ),
    ("admin-unresolvable", config('[admin]\nlisten = "nosuch.invalid:8471"'), "admin.listen"),
    # -- everything else a runtime parser would trip on ------------------------------------
    (
        "normalize-bad-group",
        config(
            '[[diff.rules]]\nname = "n"\nwhy = "w"\naction = "normalize"\npath = "$.x"\n'
            'pattern = "a"\nreplacement = "\\\\9"'
        ),
        "diff.rules[1].replacement",
    ),
    ("include-bad-regex", config('[mirror]\ninclude_paths = ["("]'), "mirror.include_paths"),
    (
        "ca-file-not-pem",
        secondary('ca_file = "{tmp}/plain.txt"', url="https://127.0.0.1:9002"),
        "targets.secondary.ca_file",
    ),
    ("empty-token-file", config('[admin]\ntoken_file = "{tmp}/empty"'), "admin.token_file"),
    ("typo", config("[verdict]\nmax_divergance_ratio = 0.1"), "verdict.max_divergance_ratio"),
    ("bad-mode", config('[ingress]\nmode = "tapp"'), "ingress.mode"),
    ("zero-endpoints", config("[endpoints]\nmax = 0"), "endpoints.max"),
]

# A representative subset is also started with ``run`` as a real process.
RUN_SUBSET = {
    "nan-divergence",
    "overflowing-size",
    "host-header-crlf",
    "set-content-length",
    "unclosed-ipv6",
    "loop-unspecified",
    "loop-ipv6-loopback",
    "capture-directory",
    "capture-uncreatable",
    "redact-space",
    "listen-unresolvable",
    "listen-not-local",
    "normalize-bad-group",
}


def test_the_table_is_big_enough():
    assert len(CASES) >= 50
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)
    assert {case_id for case_id, _, _ in CASES} >= RUN_SUBSET


def materialise(tmp_path: Path, text: str) -> Path:
    (tmp_path / "plain.txt").write_text("not a capture, not a certificate\n")
    (tmp_path / "empty").write_text("")
    (tmp_path / "token").write_text("s3cret\n")
    path = tmp_path / "shadowd.toml"
    path.write_text(text.replace("{tmp}", str(tmp_path)))
    return path


def assert_one_problem(path: Path, stderr: str, key: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{path}: {key}: "), (key, stderr)
    assert len(lines[0]) > len(f"{path}: {key}: ") + 5, stderr  # says what is wrong
    return lines[0]


@pytest.mark.parametrize(("text", "key"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_config_refuses_with_one_line_naming_the_key(tmp_path, capsys, text, key):
    path = materialise(tmp_path, text)
    assert main(["check-config", str(path)]) != 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_problem(path, captured.err, key)


RUN_CASES = [c for c in CASES if c[0] in RUN_SUBSET]


@pytest.fixture(scope="module")
def run_results(tmp_path_factory) -> dict[str, tuple[Path, str, str, int, int]]:
    """Every subset case through ``check-config`` and ``run`` as real processes, all at once
    (each process costs an interpreter start)."""
    command = [sys.executable, "-m", "shadowd"]
    started = {}
    for case_id, text, _ in RUN_CASES:
        path = materialise(tmp_path_factory.mktemp(case_id), text)
        check = subprocess.Popen(
            [*command, "check-config", str(path)], stdout=PIPE, stderr=PIPE, text=True
        )
        run = subprocess.Popen(
            [*command, "run", "-c", str(path)], stdout=PIPE, stderr=PIPE, text=True
        )
        started[case_id] = (path, check, run)
    results = {}
    try:
        for case_id, (path, check, run) in started.items():
            check_err = check.communicate(timeout=60)[1]
            run_out, run_err = run.communicate(timeout=60)
            results[case_id] = (
                path,
                check_err,
                run_out + run_err,
                check.returncode,
                run.returncode,
            )
    finally:
        for _, check, run in started.values():
            for process in (check, run):
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return results


@pytest.mark.parametrize(
    ("case_id", "key"), [(c[0], c[2]) for c in RUN_CASES], ids=[c[0] for c in RUN_CASES]
)
def test_run_refuses_the_same_way_before_anything_listens(run_results, case_id, key):
    path, check_err, run_output, check_code, run_code = run_results[case_id]
    assert check_code == 1 and run_code == 2
    line = assert_one_problem(path, run_output, key)  # stdout is empty: nothing was logged
    assert check_err.strip() == line  # the same checks, the same words


ACCEPTED = [
    ("ipv6-target", config(candidate="http://[::1]:9003")),
    ("host-header-with-port", secondary('host_header = "api.example.com:8443"')),
    ("set-header-tab-and-latin1", secondary('set_headers = { "X-A" = "a\\tb \\u00e9" }')),
    ("loopback-other-port", config(candidate="http://localhost:9003")),
    (
        "redact-paths",
        config(
            '[capture]\npath = "{tmp}/new/folder/c.shadow"\n'
            'redact_body_fields = ["$.password", "$.items[*].card", "$[\\"a name\\"]", "$.l[0]"]'
        ),
    ),
    # max_answer_bytes follows a raised diff.max_body_bytes when it is not set
    ("answer-cut-follows-kept", config('[diff]\nmax_body_bytes = "8MiB"')),
    (
        "large-finite-numbers",
        config('[ingress]\nidle_timeout = 1e9\nmax_request_body_bytes = "1GiB"'),
    ),
]


@pytest.mark.parametrize("text", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_check_config_still_accepts_what_is_fine(tmp_path, capsys, text):
    path = materialise(tmp_path, text)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["check-config", str(path)]) == 0, capsys.readouterr().err
    # The probes leave nothing behind: no capture file, no folder created.
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_capture_folder_without_write_permission_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    path = materialise(tmp_path, config(f'[capture]\npath = "{locked}/c.shadow"'))
    try:
        assert main(["check-config", str(path)]) == 1
    finally:
        locked.chmod(0o700)
    line = assert_one_problem(path, capsys.readouterr().err, "capture.path")
    assert "Permission denied" in line


def test_random_values_for_every_key_raise_nothing_but_config_errors(tmp_path):
    """Seeded: every schema key gets values of every TOML type, odd strings and numbers."""
    import datetime
    import random

    from shadowd.config import ConfigError
    from shadowd.config_loader import RULE, SECTIONS, TARGET, check_environment, parse_config

    rng = random.Random(20261129)
    odd_strings = ["", "x", "\r\n", "\0", "~nosuchuser/x", "$.a b", "(", "http://[::1", "10MiB"]
    odd_strings += ["9" * 400, str(tmp_path), "[::1]:0", "GET /a/{id}", "é€", "-1", "1e999"]

    def value(depth: int = 0):
        choices = [
            lambda: rng.choice(odd_strings),
            lambda: rng.choice([0, -1, 2**63 - 1, -(2**63), 1, 65536]),
            lambda: rng.choice([float("nan"), float("inf"), -0.0, 1e308, 0.5]),
            lambda: rng.choice([True, False]),
            lambda: rng.choice([datetime.datetime(2026, 1, 1), datetime.time(1, 2)]),
        ]
        if depth < 2:
            choices.append(lambda: [value(depth + 1) for _ in range(rng.randrange(3))])
            choices.append(
                lambda: {
                    rng.choice(["a", "Host", "X-A", "GET /x", "Content-Length", ""]): value(
                        depth + 1
                    )
                    for _ in range(rng.randrange(3))
                }
            )
        return rng.choice(choices)()

    for _ in range(3000):
        doc: dict = {
            "targets": {
                "primary": {"url": "http://127.0.0.1:9001"},
                "candidate": {"url": "http://127.0.0.1:9003"},
            }
        }
        for _ in range(rng.randrange(1, 4)):
            section = rng.choice([*SECTIONS, "rules"])
            if section == "targets":
                name = rng.choice(["primary", "candidate", "secondary"])
                table = doc["targets"].setdefault(name, {"url": "http://127.0.0.1:9002"})
                table[rng.choice(list(TARGET))] = value()
            elif section == "rules":
                keys = rng.sample(list(RULE), rng.randrange(1, 6))
                doc.setdefault("diff", {})["rules"] = [{k: value() for k in keys}]
            else:
                doc.setdefault(section, {})[rng.choice(list(SECTIONS[section]))] = value()
        try:
            check_environment(parse_config(doc, "f.toml"))
        except ConfigError as exc:
            assert all(p.startswith("f.toml: ") for p in exc.problems), doc


@pytest.mark.parametrize("taken", ["ingress", "admin"])
def test_a_listen_address_already_taken_is_named_by_its_key(tmp_path, taken):
    import socket

    with socket.socket() as holder:  # another process listening there
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]
        ingress, admin = (busy, free) if taken == "ingress" else (free, busy)
        path = tmp_path / "shadowd.toml"
        path.write_text(
            config(
                f'[ingress]\nlisten = "127.0.0.1:{ingress}"\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
            )
        )
        run = subprocess.run(
            [sys.executable, "-m", "shadowd", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1
    assert f"{taken}.listen 127.0.0.1:{busy}: Address already in use" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
