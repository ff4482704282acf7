"""The sans-io request side (shadowd.http1.request.RequestStream), table by table.

No sockets, no event loop: bytes in, events out (see http1_playbook for the DSL).
"""

from __future__ import annotations

import pytest
from http1_playbook import Answered, Bytewise, Got, Playbook, Tick

from shadowd.http1.request import (
    CONTINUE,
    Refused,
    RequestStream,
    SendData,
    UpgradeRequested,
)

HEAD_LIMIT = 1024
BODY_LIMIT = 64


def stream(max_pipelined: int = 8, header_timeout: float = 60.0, body_timeout: float = 60.0):
    return RequestStream(
        max_header_bytes=HEAD_LIMIT,
        max_body_bytes=BODY_LIMIT,
        max_pipelined=max_pipelined,
        header_timeout=header_timeout,
        body_timeout=body_timeout,
    )


GET_A = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
GET_C = b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
BAD_REQUEST = Refused(400, "bad_request", "")


# -- whole requests ------------------------------------------------------------------------------
def test_a_request_is_read_whole_however_it_is_split():
    post = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    expected = Got(b"POST", b"/p", [(b"Host", b"h"), (b"Content-Length", b"5")], b"hello", True)
    assert Playbook(stream()) << post >> expected
    assert Playbook(stream()) << Bytewise(post) >> expected


def test_http10_without_keep_alive_is_not_kept_alive():
    assert Playbook(stream()) << b"GET / HTTP/1.0\r\n\r\n" >> Got(b"GET", b"/", keep_alive=False)


# -- pipelining ----------------------------------------------------------------------------------
def test_pipelined_requests_are_queued_in_order_until_answered():
    s = stream()
    assert (
        Playbook(s)
        << GET_A + GET_B
        >> Got(b"GET", b"/a")
        >> Got(b"GET", b"/b")
        << GET_C
        >> Got(b"GET", b"/c")
    )
    assert [r.url for r in s.queue] == [b"/a", b"/b", b"/c"]
    assert Playbook(s) << Answered() << Answered()
    assert [r.url for r in s.queue] == [b"/c"]
    assert s.busy


def test_pipelining_past_the_cap_is_refused_once_and_nothing_more_is_read():
    assert (
        Playbook(stream(max_pipelined=2))
        << GET_A + GET_B + GET_C
        >> Got(b"GET", b"/a")
        >> Got(b"GET", b"/b")
        >> Refused(503, "pipeline_full", "")
        << GET_A  # dropped: the connection is ending
    )


def test_answering_frees_room_under_the_cap():
    assert (
        Playbook(stream(max_pipelined=1))
        << GET_A
        >> Got(b"GET", b"/a")
        << Answered()
        << GET_B
        >> Got(b"GET", b"/b")
    )


# -- trailers ------------------------------------------------------------------------------------
def test_trailer_fields_are_dropped_never_merged_into_the_headers():
    chunked = (
        b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n0\r\nHost: evil\r\nX-User: admin\r\n\r\n"
    )
    headers = [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked")]
    assert Playbook(stream()) << chunked >> Got(b"POST", b"/t", headers, b"hello")
    assert Playbook(stream()) << Bytewise(chunked) >> Got(b"POST", b"/t", headers, b"hello")


def test_a_body_that_looks_like_headers_or_a_request_stays_a_body():
    body = b"Host: evil\r\n\r\nGET /x HTTP/1.1\r\n\r\n"
    request = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert Playbook(stream()) << request >> Got(b"POST", b"/", [
        (b"Host", b"h"), (b"Content-Length", b"%d" % len(body))
    ], body)  # fmt: skip


# -- request smuggling and malformed framing: 400 ------------------------------------------------
SMUGGLING = {
    "content-length next to chunked": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "two different content-lengths": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
    b"Content-Length: 4\r\n\r\nabcd",
    "the same content-length twice": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
    b"Content-Length: 3\r\n\r\nabc",
    "signed content-length": b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n  folded\r\n\r\n",
    "bare LF line endings": b"GET / HTTP/1.1\nHost: h\n\n",
    "a bare LF inside the head": b"GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
    "a bare CR inside the head": b"GET / HTTP/1.1\r\nHost: h\rX-A: 1\r\n\r\n",
    "whitespace before a colon": b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    "a non-hex chunk size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    "a negative chunk size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"-3\r\nabc\r\n0\r\n\r\n",
    "a chunk size past 64 bits": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n10000000000000000\r\nabc\r\n0\r\n\r\n",
    "a chunk longer than its size": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
    b"\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    "chunked not last": b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n"
    b"\r\nabc",
    "a transfer coding without chunked": b"POST / HTTP/1.1\r\nHost: h\r\n"
    b"Transfer-Encoding: gzip\r\n\r\nabc",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "garbage": b"\x00\x01\x02 nonsense\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_ambiguous_or_malformed_framing_is_refused(request_bytes):
    assert Playbook(stream()) << request_bytes >> BAD_REQUEST << GET_A


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_what_follows_a_good_request_cannot_be_smuggled_in(request_bytes):
    assert Playbook(stream()) << GET_A + request_bytes >> Got(b"GET", b"/a") >> BAD_REQUEST


def test_the_http2_preface_is_refused_with_505():
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert Playbook(stream()) << preface >> Refused(505, "http_version", "")


# -- limits, each counted once -------------------------------------------------------------------
def test_an_oversized_head_is_refused_once_however_it_arrives():
    big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * HEAD_LIMIT + b"\r\n\r\n"
    too_large = Refused(431, "headers_too_large", "")
    assert Playbook(stream()) << big >> too_large
    assert Playbook(stream()) << Bytewise(big) >> too_large
    # a field line still being gathered by httptools counts as it arrives
    assert Playbook(stream()) << big[: HEAD_LIMIT + 40] >> too_large << big[HEAD_LIMIT + 40 :]


def test_an_endless_trailer_field_is_refused_once():
    # httptools keeps a field until its line ends: unbounded, an endless trailer field grew
    # a worker's memory until the body timeout. It is bounded like a head.
    start = (
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: "
    )
    too_large = Refused(431, "headers_too_large", "")
    assert Playbook(stream()) << start << b"t" * HEAD_LIMIT << b"t" >> too_large << b"t"
    # within the limit, the trailer is read (and dropped) and the request goes on
    assert Playbook(stream()) << start + b"t" * 100 + b"\r\n\r\n" >> Got(b"POST", b"/u")


def test_chunk_framing_between_body_pieces_never_adds_up():
    chunks = b"".join(b"1\r\n%c\r\n" % c for c in b"abcdefghij" * 5)
    request = (
        b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert Playbook(stream()) << Bytewise(request) >> Got(b"POST", b"/u")


def test_an_oversized_url_is_refused_once():
    assert (
        Playbook(stream())
        << Bytewise(b"GET /" + b"u" * HEAD_LIMIT + b" HTTP/1.1\r\n\r\n")
        >> Refused(431, "headers_too_large", "")
    )


def test_a_head_at_the_limit_passes():
    pad = HEAD_LIMIT - len(b"GET / HTTP/1.1\r\nHost: h\r\nX: \r\n\r\n")
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * pad + b"\r\n\r\n"
    assert len(head) == HEAD_LIMIT
    assert Playbook(stream()) << head >> Got(b"GET", b"/")


def test_http11_without_host_is_refused_and_http10_without_host_passes():
    # RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host (nginx does)
    assert (
        Playbook(stream())
        << b"GET / HTTP/1.1\r\nX: 1\r\n\r\n"
        >> Refused(400, "bad_request", "no Host header")
    )
    assert Playbook(stream()) << b"GET / HTTP/1.0\r\n\r\n" >> Got(b"GET", b"/")


def test_a_declared_oversized_body_is_refused_at_the_head():
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (BODY_LIMIT + 1)
    assert (
        Playbook(stream())
        << head
        >> Refused(413, "request_too_large", "")
        << b"x" * (BODY_LIMIT + 1)  # not read, not refused again
    )


def test_a_chunked_body_growing_past_the_limit_is_refused_once():
    chunk = b"%x\r\n%s\r\n" % (BODY_LIMIT // 2, b"x" * (BODY_LIMIT // 2))
    assert (
        Playbook(stream())
        << b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        << chunk
        << chunk
        << chunk
        >> Refused(413, "request_too_large", "")
        << chunk
        << b"0\r\n\r\n"
    )


def test_a_body_at_the_limit_passes():
    body = b"x" * BODY_LIMIT
    head = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % BODY_LIMIT
    assert Playbook(stream()) << head << Bytewise(body) >> Got(b"POST", b"/", body=body)


# -- Expect: 100-continue ------------------------------------------------------------------------
EXPECTING = b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"


def test_100_continue_is_sent_at_once_when_nothing_is_being_answered():
    assert (
        Playbook(stream())
        << EXPECTING
        >> SendData(CONTINUE)
        << b"ok"
        >> Got(b"POST", b"/e", body=b"ok")
    )


def test_100_continue_behind_an_answer_in_progress_is_owed_until_it_is_sent():
    assert (
        Playbook(stream())
        << GET_A + EXPECTING
        >> Got(b"GET", b"/a")
        << Answered()
        >> SendData(CONTINUE)
        << b"ok"
        >> Got(b"POST", b"/e", body=b"ok")
    )


def test_a_body_sent_without_waiting_for_100_continue_owes_nothing():
    assert (
        Playbook(stream())
        << GET_A + EXPECTING + b"ok"
        >> Got(b"GET", b"/a")
        >> Got(b"POST", b"/e", body=b"ok")
        << Answered()  # no 100 Continue any more: the body is in
    )


def test_a_refused_expecting_request_gets_no_100_continue():
    head = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 999\r\n\r\n"
    assert Playbook(stream()) << head >> Refused(413, "request_too_large", "")


# -- upgrades ------------------------------------------------------------------------------------
def test_an_upgrade_stops_the_parsing_and_hands_over_what_follows():
    upgrade = (
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x05hello"
    )
    s = stream()
    assert (
        Playbook(s)
        << upgrade
        >> Got(b"GET", b"/ws", upgrade=b"websocket")
        >> UpgradeRequested(b"\x81\x05hello")
        << GET_A  # a tunnel's bytes, not HTTP/1: not parsed
    )
    assert s.upgrading


def test_an_upgrade_header_without_connection_upgrade_is_a_plain_request():
    plain = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
    assert (
        Playbook(stream()) << plain + GET_A >> Got(b"GET", b"/", upgrade=b"") >> Got(b"GET", b"/a")
    )


# -- deadlines -----------------------------------------------------------------------------------
def test_a_trickled_head_is_refused_at_its_deadline():
    assert (
        Playbook(stream(header_timeout=10))
        << b"GET / HTTP/1.1\r\n"
        << Tick(6)
        << b"X-A: 1\r\n"
        << Tick(5)
        >> Refused(408, "header_timeout", "")
    )


def test_a_trickled_body_is_refused_at_its_deadline():
    assert (
        Playbook(stream(header_timeout=10, body_timeout=30))
        << b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n"
        << Tick(20)  # past the head's deadline, not the body's
        << b"x"
        << Tick(11)
        >> Refused(408, "body_timeout", "")
    )


def test_a_body_on_time_is_read():
    assert (
        Playbook(stream(body_timeout=30))
        << b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"
        << Tick(29)
        << b"ok"
        >> Got(b"POST", b"/", body=b"ok")
        << Tick(3600)  # nothing being read: no deadline (the idle timeout is the driver's)
    )


def test_no_deadline_runs_while_earlier_requests_are_answered():
    # Reading is paused while answers are owed: the half-read request cannot progress.
    assert (
        Playbook(stream(header_timeout=10, body_timeout=10))
        << GET_A + b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n"
        >> Got(b"GET", b"/a")
        << Tick(100)
        << Answered()  # reading resumes: the body's deadline runs from now
        << Tick(9)
        << b"ok"
        >> Got(b"POST", b"/", body=b"ok")
    )
