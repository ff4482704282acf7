"""CPU time of the proxy's per-request HTTP/1 path, this tree against another one (A/B).

One request's whole trip through shadowd's protocol code, in-process, no sockets: the
client's GET read by ``ClientConnection.data_received``, the primary call's payload written
by a real ``UpstreamConnection``, the primary's answer read by it and relayed to the client
(head framed, body written). Transports are fakes that keep the bytes, so what is measured is
the protocol code alone, in CPU time: on a shared, busy machine a wall-clock benchmark
(proxy_bench.py) swings by 2x between runs, this does not.

    .venv/bin/python benchmarks/http1_path_bench.py --against /tmp/before [--rounds 7]

``--against`` is another checkout (``git archive <commit> | tar -x -C /tmp/before``); each
round runs both trees in fresh processes, alternating, and the medians are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUEST = (
    b"GET /api/items/42?expand=stock HTTP/1.1\r\nHost: shop.example\r\n"
    b"User-Agent: bench/1.0\r\nAccept: application/json\r\n\r\n"
)
BODY = b'{"id": 42, "name": "widget", "price": 9.99, "stock": {"count": 17}}' * 14
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: keep-alive\r\n\r\n%s" % (len(BODY), BODY)
)


def measure(requests: int) -> float:
    """µs of CPU per request through the tree on sys.path (run inside a child process)."""
    import asyncio

    from test_http_protocol import connect

    from shadowd.upstream.connection import UpstreamConnection

    class Target:
        name = "primary"

    class Pool:
        target = Target()

        def release(self, conn: object) -> None:
            pass

        def connection_closed(self, conn: object) -> None:
            pass

    class Transport:
        def write(self, data: bytes) -> None:
            pass

        def writelines(self, parts: list[bytes]) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def close(self) -> None:
            pass

    async def run() -> float:
        conn, client, ingress = connect()
        client.write = lambda data: None  # keep nothing: steady state, no growing buffer
        client.writelines = lambda parts: None
        upstream = UpstreamConnection(Pool())  # type: ignore[arg-type]
        upstream.connection_made(Transport())  # type: ignore[arg-type]
        calls = ingress.primary_pool.calls
        started = time.process_time()
        for _ in range(requests):
            conn.data_received(REQUEST)
            call = calls.pop()
            upstream.start(call)
            upstream.data_received(ANSWER)
        return (time.process_time() - started) / requests * 1e6

    with asyncio.Runner() as runner:
        runner.run(run())  # warm-up
        return runner.run(run())


def child(tree: Path, requests: int) -> float:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'tests'}")
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--measure", str(requests)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", type=Path, help="another checkout to compare with")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(f"{measure(args.measure):.3f}")
        return 0
    trees = {"this tree": ROOT}
    if args.against:
        trees[f"--against {args.against}"] = args.against.resolve()
    figures: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, tree in trees.items():  # alternating: load drifts hit both alike
            figures[name].append(child(tree, args.requests))
    print(f"µs of CPU per proxied GET (~1 KB answer), median of {args.rounds} rounds")
    base = statistics.median(figures["this tree"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(
            f"  {name:<40}{median:>8.2f}  (min {min(values):.2f}, max {max(values):.2f})"
            f"  {median / base:.3f}x this tree"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
