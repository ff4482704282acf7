"""Entry point of a worker process: ``python -m shadowd.worker ROLE INDEX RUNTIME_DIR``.

Started by the supervisor only. The validated config arrives pickled on standard input (the
supervisor validated it once; a worker never re-reads the file), the control channel and the
hand-off sockets live in the supervisor's private runtime directory (mode 0700).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import os
import pickle
import signal
import socket
import sys

from shadowd.config import Config
from shadowd.control import Channel
from shadowd.ingress.descriptors import raise_open_files_limit
from shadowd.logs import setup_logging

log = logging.getLogger("shadowd.worker")


def control_socket(runtime_dir: str) -> str:
    return os.path.join(runtime_dir, "control.sock")


async def _main(args: argparse.Namespace, config: Config) -> None:
    channel = await Channel.connect(control_socket(args.runtime_dir))
    channel.send({"t": "hello", "role": args.role, "index": args.index, "pid": os.getpid()})
    if args.role == "ingress":
        from shadowd.ingress.worker import IngressWorker
        from shadowd.stream.handoff import analysis_socket

        analysis_index = args.index % config.analysis.worker_count()
        worker = IngressWorker(
            config, args.index, analysis_socket(args.runtime_dir, analysis_index)
        )
        sock = socket.socket(fileno=args.fd) if args.fd is not None else None
        await worker.run(channel, sock, args.port)
    elif config.stream.redis:
        from shadowd.stream.redis_stream import consumer_name
        from shadowd.stream.worker import StreamAnalysisWorker

        name = consumer_name(config.stream, f".analysis-{args.index}")
        await StreamAnalysisWorker(config, name).run_supervised(channel)
    else:
        from shadowd.analysis.worker import AnalysisWorker

        await AnalysisWorker(config, args.index, args.runtime_dir).run(channel)
    channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shadowd.worker", description=__doc__)
    parser.add_argument("role", choices=("ingress", "analysis"))
    parser.add_argument("index", type=int)
    parser.add_argument("runtime_dir")
    parser.add_argument("--port", type=int, default=0, help="the ingress port to bind")
    parser.add_argument("--fd", type=int, default=None, help="an inherited listening socket")
    args = parser.parse_args(argv)
    config: Config = pickle.loads(sys.stdin.buffer.read())
    setup_logging(config.logging.level, config.logging.format)
    raise_open_files_limit()  # inherited from the supervisor already, unless started by hand
    # The supervisor decides when workers stop: a Ctrl-C or a terminal hang-up reaches the
    # whole process group, and must not kill the data plane before it is drained.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if args.role == "analysis" and config.analysis.nice:
        # Asked for: the data plane wins a busy core (at nice 5 the kernel gives an ingress
        # worker about three times the CPU of an analysis worker when both are runnable), and
        # the analysis falls behind sooner and sheds. The default (0) shares the cores
        # evenly: the analysis takes only what it needs to keep up (docs/architecture.md).
        with contextlib.suppress(OSError):  # refused (a seccomp filter): default priority
            os.nice(config.analysis.nice)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    importlib.import_module(f"shadowd.{args.role}.worker")
    # What is loaded by now lives as long as the process: out of the collector's sight, a
    # full collection walks only what serving creates (with these modules in view one took
    # 22-38 ms, a stall of every connection of this worker; measured on this 2-core host).
    gc.freeze()
    try:
        asyncio.run(_main(args, config))
    except OSError as exc:
        log.error("%s worker %d cannot start: %s", args.role, args.index, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
