"""The proxy ingress fed bytes directly: a fake transport, a fake primary pool, no sockets.

Each test drives ``ClientConnection`` exactly as the event loop would (``data_received``,
``pause_writing``...) and answers its primary calls by hand, so pipelining and ordering cases
are deterministic.
"""

from __future__ import annotations

import logging

import httptools
import pytest
from conftest import build_config

from shadowd.exchange import ERROR_POOL_TIMEOUT
from shadowd.ingress import proxy as proxy_module
from shadowd.ingress.proxy import ClientConnection
from shadowd.metrics import Metrics
from shadowd.upstream.connection import Call, UpstreamConnection
from shadowd.upstream.request import RequestTemplate


class FakeTransport:
    def __init__(self) -> None:
        self.data = bytearray()
        self.reading = True
        self.closed = False
        self.aborted = False
        self.eof = False  # FIN sent: the connection is ending (lingering close)

    def get_extra_info(self, name: str, default=None):
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.ended, "write after close"
        self.data += data

    def writelines(self, parts) -> None:
        for part in parts:
            self.write(part)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    @property
    def ended(self) -> bool:
        return self.closed or self.eof

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed


class FakePool:
    """Keeps every call; the test answers them (``answer``) or attaches a connection."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def send(self, payload, sink, *, head_only=False, retryable=False) -> Call:
        call = Call(payload, sink, head_only, retryable)
        self.calls.append(call)
        return call


class FakeMirror:
    def wants(self, method, path, body_size) -> bool:
        return False


class FakeIngress:
    def __init__(self, **ingress) -> None:
        self.config = build_config("http://127.0.0.1:1", "http://127.0.0.1:2", ingress=ingress)
        self.metrics = Metrics(self.config)
        self.primary_pool = FakePool()
        self.primary_template = RequestTemplate(self.config.primary)
        self.mirror = FakeMirror()
        self.endpoints = None
        self.now = 1000.0
        self.draining = False
        self.access_log = False
        self.open = 0

    def connection_opened(self, conn) -> None:
        self.open += 1

    def connection_closed(self, conn) -> None:
        self.open -= 1

    def rejected(self, reason: str) -> float:
        return self.metrics._rejected[reason]._value.get()


def connect(**ingress) -> tuple[ClientConnection, FakeTransport, FakeIngress]:
    ingress_ = FakeIngress(**ingress)
    conn = ClientConnection(ingress_)  # type: ignore[arg-type]
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, ingress_


def answer(call: Call, body: bytes = b"ok", chunks: int = 1) -> None:
    """The primary answers ``call`` in full."""
    call.done = True
    sink = call.sink
    if chunks == 1:
        sink.on_response_head(200, b"OK", [(b"Content-Length", b"%d" % len(body))])
        sink.on_response_body(body)
    else:
        sink.on_response_head(200, b"OK", [(b"Transfer-Encoding", b"chunked")])
        for _ in range(chunks):
            sink.on_response_body(body)
    sink.on_response_complete()


def parse_answers(data: bytes) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Every complete answer in ``data`` (1xx included), in order."""
    answers: list[tuple[int, dict[bytes, bytes], bytes]] = []

    class Sink:
        headers: dict[bytes, bytes]
        body: bytearray

        def on_message_begin(self) -> None:
            self.headers, self.body = {}, bytearray()

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, chunk: bytes) -> None:
            self.body += chunk

        def on_message_complete(self) -> None:
            answers.append((parser.get_status_code(), self.headers, bytes(self.body)))

    sink = Sink()
    parser = httptools.HttpResponseParser(sink)
    rest = data
    while rest:
        # llhttp treats a 1xx as a whole message; each answer is fed on its own so the
        # parser's keep-alive state never stops it.
        parser = httptools.HttpResponseParser(sink)
        before = len(answers)
        end = _answer_end(rest)
        parser.feed_data(rest[:end])
        assert len(answers) == before + 1, rest[:200]
        rest = rest[end:]
    return answers


def _answer_end(data: bytes) -> int:
    head_end = data.index(b"\r\n\r\n") + 4
    head = data[:head_end].lower()
    if head.startswith(b"http/1.1 1"):
        return head_end
    if b"transfer-encoding: chunked" in head:
        return data.index(b"\r\n0\r\n\r\n", head_end - 2) + 7
    length = 0
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head_end + length


GET = b"GET /a HTTP/1.1\r\nHost: shop\r\n\r\n"
STAR = b"GET * HTTP/1.1\r\nHost: shop\r\n\r\n"


# -- 1. trailers ------------------------------------------------------------------------------
async def test_chunked_trailers_never_become_headers():
    conn, _transport, ingress = connect()
    conn.data_received(
        b"POST /upload HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-User-Id: admin\r\nHost: evil\r\n\r\n"
    )
    (call,) = ingress.primary_pool.calls
    head, _, body = call.payload.partition(b"\r\n\r\n")
    assert body == b"abc"
    assert b"x-user-id" not in head.lower()
    assert b"evil" not in head
    assert b"\r\nHost: shop\r\n" in head


# -- 2. pipelined local answers ---------------------------------------------------------------
async def test_thousands_of_pipelined_local_answers_do_not_recurse(monkeypatch):
    monkeypatch.setattr(proxy_module, "MAX_PIPELINED", 10_000)
    conn, transport, ingress = connect()
    conn.data_received(GET + STAR * 4999)  # 5,000 requests, 135 KB
    assert not transport.reading  # pipelined: one at a time
    (call,) = ingress.primary_pool.calls
    answer(call)  # the first answer frees the queue: 4,999 local answers, one after the other
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [200] + [400] * 4999
    assert transport.reading and not transport.closed
    conn.data_received(GET)  # the connection is still usable
    assert len(ingress.primary_pool.calls) == 2


async def test_pipeline_depth_is_capped_answered_in_order_then_closed():
    conn, transport, ingress = connect()
    cap = proxy_module.MAX_PIPELINED
    conn.data_received(GET + STAR * (cap + 50))
    assert ingress.rejected("pipeline_full") == 1
    (call,) = ingress.primary_pool.calls
    answer(call)
    answers = parse_answers(bytes(transport.data))
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] + [400] * (cap - 1) + [503]
    assert answers[-1][1][b"connection"] == b"close"
    assert transport.ended


# -- 4. oversized head -----------------------------------------------------------------------
async def test_an_oversized_head_is_counted_and_answered_once():
    conn, transport, ingress = connect(max_header_bytes=1024)
    head = b"GET /a HTTP/1.1\r\nHost: shop\r\n" + b"X-Pad: %s\r\n" % (b"y" * 300) * 8 + b"\r\n"
    conn.data_received(head)
    assert ingress.rejected("headers_too_large") == 1
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [431]
    assert ingress.metrics._by_class[4]._value.get() == 1
    assert transport.ended


# -- 5. our bugs are not bad input -----------------------------------------------------------
async def test_an_exception_in_a_callback_is_an_internal_error_with_a_traceback(
    monkeypatch, caplog
):
    conn, transport, ingress = connect()

    def broken(self, req):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ClientConnection, "_dispatch", broken)
    with caplog.at_level(logging.ERROR, logger="shadowd.ingress"):
        conn.data_received(GET)
    assert ingress.rejected("internal_error") == 1
    assert ingress.rejected("bad_request") == 0
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [500]
    assert transport.ended
    (record,) = [r for r in caplog.records if r.name == "shadowd.ingress"]
    assert record.exc_info is not None and record.exc_info[0] is ZeroDivisionError


async def test_malformed_input_is_still_a_400():
    conn, transport, ingress = connect()
    conn.data_received(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
    assert ingress.rejected("bad_request") == 1
    assert ingress.rejected("internal_error") == 0
    assert parse_answers(bytes(transport.data))[0][0] == 400


# -- 6. flow control -------------------------------------------------------------------------
async def test_pause_writing_is_latched_until_the_upstream_connection_attaches():
    conn, _transport, ingress = connect()
    conn.data_received(GET + GET)
    first = ingress.primary_pool.calls[0]
    # The first answer fills the client's buffer as it completes: no call is attached then.
    first.done = True
    first.sink.on_response_head(200, b"OK", [(b"Content-Length", b"2")])
    first.sink.on_response_body(b"ok")
    conn.pause_writing()
    first.sink.on_response_complete()
    second = ingress.primary_pool.calls[1]
    assert second.paused  # the second call starts paused ...
    # ... and its connection, attached later, stops reading as it is attached.
    upstream = UpstreamConnection(pool=None)  # type: ignore[arg-type]
    socket = FakeTransport()
    upstream.connection_made(socket)  # type: ignore[arg-type]
    upstream.start(second)
    assert not socket.reading
    assert socket.data == second.payload
    conn.resume_writing()
    assert socket.reading and not second.paused


# -- 7. timeouts by kind ---------------------------------------------------------------------
async def test_a_pool_timeout_answers_504_with_its_kind_counted():
    conn, transport, ingress = connect()
    conn.data_received(GET)
    (call,) = ingress.primary_pool.calls
    call.finish_error(ERROR_POOL_TIMEOUT)
    assert parse_answers(bytes(transport.data))[0][0] == 504
    errors = ingress.metrics._errors
    assert errors[("primary", "pool_timeout")]._value.get() == 1
    assert errors[("primary", "timeout")]._value.get() == 0


# -- 8. explicit empty bodies ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("request_bytes", "length_lines"),
    [
        (b"DELETE /a HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n", 1),
        (b"DELETE /a HTTP/1.1\r\nHost: shop\r\n\r\n", 0),
        (b"POST /a HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n\r\n", 1),
        (b"POST /a HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1),
        (b"OPTIONS /a HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 1),
        (b"DELETE /a HTTP/1.1\r\nHost: shop\r\nContent-Length: 2\r\n\r\nhi", 1),
    ],
)
async def test_an_explicit_content_length_0_is_kept(request_bytes, length_lines):
    conn, _transport, ingress = connect()
    conn.data_received(request_bytes)
    (call,) = ingress.primary_pool.calls
    head = call.payload.partition(b"\r\n\r\n")[0].lower()
    assert head.count(b"\r\ncontent-length:") == length_lines
    if length_lines and not request_bytes.endswith(b"hi"):
        assert b"\r\ncontent-length: 0" in head


# -- 9. pipelining edge cases ----------------------------------------------------------------
async def test_100_continue_waits_for_the_answer_streaming_before_it():
    conn, transport, ingress = connect()
    conn.data_received(GET)
    (first,) = ingress.primary_pool.calls
    first.sink.on_response_head(200, b"OK", [(b"Transfer-Encoding", b"chunked")])
    first.sink.on_response_body(b"part one")
    first.sink.on_response_flush()  # half of the first answer is with the client
    conn.data_received(
        b"POST /b HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert b"100 Continue" not in transport.data  # not in the middle of the chunked answer
    first.done = True
    first.sink.on_response_body(b"part two")
    first.sink.on_response_complete()
    data = bytes(transport.data)
    assert data.endswith(b"0\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n")  # right after it, once
    conn.data_received(b"hello")
    second = ingress.primary_pool.calls[1]
    assert second.payload.endswith(b"\r\n\r\nhello")
    answer(second)
    statuses = [status for status, _, _ in parse_answers(bytes(transport.data))]
    assert statuses == [200, 100, 200]


async def test_100_continue_is_sent_at_once_when_nothing_is_in_flight():
    conn, transport, _ = connect()
    conn.data_received(
        b"POST /b HTTP/1.1\r\nHost: shop\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
    )
    assert bytes(transport.data) == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_connect_is_refused_and_the_connection_closed():
    conn, transport, ingress = connect()
    conn.data_received(b"CONNECT shop:443 HTTP/1.1\r\nHost: shop:443\r\n\r\n" + GET + GET)
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [405]
    assert answers[0][1][b"connection"] == b"close"
    assert transport.ended
    assert ingress.primary_pool.calls == []


async def test_connect_after_pipelined_requests_answers_them_then_closes():
    conn, transport, ingress = connect()
    conn.data_received(GET + b"CONNECT shop:443 HTTP/1.1\r\nHost: shop:443\r\n\r\n")
    answer(ingress.primary_pool.calls[0])
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [200, 405]
    assert transport.ended


@pytest.mark.parametrize(
    ("limits", "oversized", "status"),
    [
        (
            {"max_request_body_bytes": 100},
            b"POST /big HTTP/1.1\r\nHost: shop\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
            413,
        ),
        (
            {"max_header_bytes": 1024},
            b"GET /big HTTP/1.1\r\nHost: shop\r\nX-Pad: " + b"y" * 2000 + b"\r\n\r\n",
            431,
        ),
    ],
)
async def test_an_oversized_request_after_50_pipelined_ones_is_refused_after_their_answers(
    limits, oversized, status
):
    conn, transport, ingress = connect(**limits)
    conn.data_received(GET * 50 + oversized)
    for i in range(50):
        answer(ingress.primary_pool.calls[i], b"answer %d" % i)
    answers = parse_answers(bytes(transport.data))
    assert [s for s, _, _ in answers] == [200] * 50 + [status]
    assert [body for _, _, body in answers[:50]] == [b"answer %d" % i for i in range(50)]
    assert answers[-1][1][b"connection"] == b"close"
    assert transport.ended
    assert len(ingress.primary_pool.calls) == 50


async def test_two_host_headers_are_refused_with_400():
    conn, transport, ingress = connect()
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: shop\r\nHost: evil\r\n\r\n")
    assert ingress.primary_pool.calls == []
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [400]
    assert b"Host" in answers[0][2]
    assert transport.ended


# -- 10. HTTP/2 -------------------------------------------------------------------------------
async def test_an_http2_preface_gets_505_naming_http2(caplog):
    conn, transport, ingress = connect()
    with caplog.at_level(logging.WARNING, logger="shadowd.ingress"):
        conn.data_received(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00")
    answers = parse_answers(bytes(transport.data))
    assert [status for status, _, _ in answers] == [505]
    assert b"HTTP/2" in answers[0][2]
    assert transport.ended
    assert ingress.rejected("http_version") == 1
    assert ingress.rejected("bad_request") == 0
    assert any("HTTP/2" in r.getMessage() for r in caplog.records)


async def test_an_internal_error_handling_the_answer_is_a_500_not_a_502():
    conn, transport, ingress = connect()
    conn.data_received(GET)
    (call,) = ingress.primary_pool.calls
    call.finish_error("internal")
    assert parse_answers(bytes(transport.data))[0][0] == 500
    assert ingress.rejected("internal_error") == 1
    assert ingress.rejected("primary_unreachable") == 0


async def test_a_half_close_after_pipelined_requests_still_gets_every_answer():
    conn, transport, ingress = connect()
    conn.data_received(GET * 3)
    assert conn.eof_received() is True  # keep the connection open to answer
    for i in range(3):
        assert not transport.ended
        answer(ingress.primary_pool.calls[i], b"answer %d" % i)
    answers = parse_answers(bytes(transport.data))
    assert [body for _, _, body in answers] == [b"answer 0", b"answer 1", b"answer 2"]
    assert answers[-1][1][b"connection"] == b"close"
    assert transport.ended


async def test_one_endless_header_line_is_refused_before_it_is_all_read():
    conn, transport, ingress = connect(max_header_bytes=64 * 1024)
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: shop\r\nX-Endless: ")
    fed = 0
    while not transport.ended and fed < 10 * 1024 * 1024:
        conn.data_received(b"y" * 16384)
        fed += 16384
    assert fed <= 96 * 1024  # not 10 MiB gathered by the parser first
    assert [status for status, _, _ in parse_answers(bytes(transport.data))] == [431]
    assert ingress.rejected("headers_too_large") == 1


async def test_many_requests_split_across_reads_are_not_mistaken_for_a_large_head():
    conn, transport, ingress = connect(max_header_bytes=1024)
    post = b"POST /a HTTP/1.1\r\nHost: shop\r\nContent-Length: 3000\r\n\r\n" + b"z" * 3000
    for i in range(20):
        # each read ends mid-body or right at a request's end, or mid-head
        conn.data_received(post[:40])
        conn.data_received(post[40:2000])
        conn.data_received(post[2000:])
        answer(ingress.primary_pool.calls[i])
    assert ingress.rejected("headers_too_large") == 0
    assert len(parse_answers(bytes(transport.data))) == 20


# -- X-Forwarded-* and the client's Connection header -------------------------------------------
async def test_forwarded_fields_the_client_declared_hop_by_hop_are_not_relayed_or_merged():
    conn, _transport, ingress = connect()
    conn.data_received(
        b"GET /a HTTP/1.1\r\nHost: shop\r\nConnection: x-forwarded-for, X-Forwarded-Proto\r\n"
        b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Kept: 1\r\n\r\n"
    )
    (call,) = ingress.primary_pool.calls
    head = call.payload.partition(b"\r\n\r\n")[0]
    assert b"10.9.9.9" not in head
    assert b"\r\nX-Forwarded-For: 127.0.0.1\r\n" in head
    assert b"\r\nX-Forwarded-Proto: http\r\n" in head  # ours: the client's was hop-by-hop
    assert b"\r\nX-Kept: 1\r\n" in head
    assert head.endswith(b"\r\nX-Forwarded-Host: shop")


async def test_forwarded_fields_of_an_ordinary_request_are_merged():
    conn, _transport, ingress = connect()
    conn.data_received(
        b"GET /a HTTP/1.1\r\nHost: shop\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n"
        b"X-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\n\r\n"
    )
    (call,) = ingress.primary_pool.calls
    head = call.payload.partition(b"\r\n\r\n")[0]
    assert b"\r\nX-Forwarded-For: 10.9.9.9, 127.0.0.1\r\n" in head
    assert b"\r\nX-Forwarded-Proto: https\r\n" in head
    assert b"X-Forwarded-Proto: http\r\n" not in head
    assert b"connection" not in head.lower() and b"expect" not in head.lower()
