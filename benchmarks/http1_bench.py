"""What the sans-io HTTP/1 layer costs per request, against httptools (llhttp) alone.

One request's trip through the layer, in-process, no sockets: the client's GET read from a
buffer of pipelined GETs (``RequestStream.receive``, then ``answered``), the primary's answer
read (``ResponseStream.expect`` + ``receive``) and its head framed for the client
(``frame_head``). The floor is the same bytes through bare httptools parsers whose callbacks
only collect the URL, the headers and the body: what any llhttp-based proxy pays. The
difference is the layer's own work (limits, trailers, events, framing rules).

    .venv/bin/python benchmarks/http1_bench.py [--requests 20000] [--rounds 7]

Figures are medians of --rounds rounds, µs per request (one core, CPU time of this process).
"""

from __future__ import annotations

import argparse
import statistics
import time

import httptools

from shadowd.http1.request import ParsedRequest, RequestStream
from shadowd.http1.response import ResponseHead, ResponseStream, frame_head

REQUEST = (
    b"GET /api/items/42?expand=stock HTTP/1.1\r\nHost: shop.example\r\n"
    b"User-Agent: bench/1.0\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\n"
    b"Cookie: session=abcdef0123456789\r\n\r\n"
)
BODY = b'{"id": 42, "name": "widget", "price": 9.99, "stock": {"count": 17}}' * 14
ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 19:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n%s"
    % (len(BODY), BODY)
)
PIPELINED = 16  # requests per read, as a pipelining client (or wrk with -H pipelining) sends


class BareRequest:
    """httptools alone: the least a proxy must collect from a request."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = 0

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.done += 1


class BareResponse:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        self.done += 1


def bare(requests: int) -> float:
    reading = BareRequest()
    request_parser = httptools.HttpRequestParser(reading)
    answer = BareResponse()
    response_parser = httptools.HttpResponseParser(answer)
    batch = REQUEST * PIPELINED
    started = time.process_time()
    for _ in range(requests // PIPELINED):
        request_parser.feed_data(batch)
        for _ in range(PIPELINED):
            response_parser.feed_data(ANSWER)
    elapsed = time.process_time() - started
    assert reading.done == answer.done == requests // PIPELINED * PIPELINED
    return elapsed


def sans_io(requests: int) -> float:
    stream = RequestStream(
        max_header_bytes=64 * 1024, max_body_bytes=10 << 20, max_pipelined=PIPELINED
    )
    answers = ResponseStream()
    batch = REQUEST * PIPELINED
    now = 0.0
    read = 0
    started = time.process_time()
    for _ in range(requests // PIPELINED):
        events = stream.receive(batch, now)
        for event in events:
            assert type(event) is ParsedRequest
            request = event
            answers.expect(head_only=False)
            for answer_event in answers.receive(ANSWER):
                if type(answer_event) is ResponseHead:
                    frame_head(
                        answer_event.status,
                        answer_event.reason,
                        answer_event.headers,
                        head_request=request.method == b"HEAD",
                        http11=request.http11,
                        close=False,
                    )
            stream.answered(now)
            read += 1
    elapsed = time.process_time() - started
    assert read == requests // PIPELINED * PIPELINED
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    bare(2_000)  # warm-up
    sans_io(2_000)
    rows: dict[str, list[float]] = {"httptools alone": [], "shadowd.http1": []}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit both alike
        rows["httptools alone"].append(bare(args.requests) / args.requests * 1e6)
        rows["shadowd.http1"].append(sans_io(args.requests) / args.requests * 1e6)
    floor = statistics.median(rows["httptools alone"])
    print(
        f"{args.requests:,} pipelined GETs ({PIPELINED} per read) with a {len(ANSWER)} B answer "
        f"each, median of {args.rounds} rounds"
    )
    print(f"{'':<18}{'µs/request':>12}{'min':>8}{'max':>8}{'vs httptools':>14}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(
            f"{name:<18}{median:>12.2f}{min(values):>8.2f}{max(values):>8.2f}"
            f"{median / floor:>13.2f}x"
        )
    print(
        f"the layer's own cost: {statistics.median(rows['shadowd.http1']) - floor:.2f} µs/request"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
