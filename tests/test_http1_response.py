"""The sans-io response side (shadowd.http1.response): reading a target's answers
(``ResponseStream``) and framing the primary's answer for the client (``frame_head``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from http1_playbook import Bytewise, PeerClosed, Playbook, Send

from shadowd.http1.response import (
    MAX_HEAD_BYTES,
    ResponseComplete,
    ResponseFailed,
    ResponseHead,
    ResponseStream,
    frame_head,
)

CL_HEADERS = [(b"Content-Length", b"5")]
OK_5 = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def head(status: int = 200, reason: bytes = b"OK", headers=None) -> ResponseHead:
    return ResponseHead(status, reason, CL_HEADERS if headers is None else headers)


# -- reading answers -----------------------------------------------------------------------------
def test_a_content_length_body_ends_at_its_length_and_keeps_the_connection():
    assert (
        Playbook(ResponseStream())
        << Send()
        << OK_5
        >> head()
        >> b"hello"
        >> ResponseComplete(keep_alive=True)
    )


def test_a_chunked_body_is_read_chunk_by_chunk_and_its_trailers_are_not_headers():
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert (
        Playbook(ResponseStream())
        << Send()
        << answer
        >> head(headers=[(b"Transfer-Encoding", b"chunked")])
        >> b"abc"
        >> b"de"
        >> ResponseComplete(keep_alive=True)
    )


def test_a_head_that_never_ends_fails_as_too_large_however_it_arrives():
    # A target that never ends its head (endless fields, or one endless value) grew a
    # worker's memory by gigabytes within its timeout.
    fields = b"HTTP/1.1 200 OK\r\n" + b"X-Field: value\r\n" * (MAX_HEAD_BYTES // 16 + 1)
    too_large = ResponseFailed("too_large")
    assert Playbook(ResponseStream()) << Send() << fields >> too_large
    one_value = b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * MAX_HEAD_BYTES
    playbook = Playbook(ResponseStream()) << Send()
    for start in range(0, len(one_value), 4096):
        playbook = playbook << one_value[start : start + 4096]
    assert playbook >> too_large


def test_interim_answers_count_toward_the_head_limit():
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    endless = interim * (MAX_HEAD_BYTES // len(interim) + 1)
    assert Playbook(ResponseStream()) << Send() << endless >> ResponseFailed("too_large")


def test_an_endless_trailer_fails_but_chunk_framing_between_pieces_never_adds_up():
    head_bytes = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked = [(b"Transfer-Encoding", b"chunked")]
    trailer = head_bytes + b"1\r\na\r\n0\r\nX-Trailer: "
    playbook = Playbook(ResponseStream()) << Send() << trailer >> head(headers=chunked) >> b"a"
    assert playbook << b"t" * MAX_HEAD_BYTES << b"t" >> ResponseFailed("too_large")
    # A big body in many chunks: the framing is counted only since the last piece.
    playbook = Playbook(ResponseStream()) << Send() << head_bytes >> head(headers=chunked)
    for _ in range(3):
        playbook = playbook << b"8000\r\n" + b"b" * 0x8000 + b"\r\n" >> b"b" * 0x8000
    assert playbook << b"0\r\n\r\n" >> ResponseComplete(keep_alive=True)


def test_an_answer_to_head_ends_at_its_head_and_the_next_answer_is_read_fresh():
    # The Content-Length describes the GET answer's body, which a HEAD answer never has.
    assert (
        Playbook(ResponseStream())
        << Send(head_only=True)
        << b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        >> head()
        >> ResponseComplete(keep_alive=True)
        << Send()
        << OK_5
        >> head()
        >> b"hello"
        >> ResponseComplete(keep_alive=True)
    )


def test_an_answer_to_head_split_byte_by_byte():
    assert (
        Playbook(ResponseStream())
        << Send(head_only=True)
        << Bytewise(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        >> head()
        >> ResponseComplete(keep_alive=True)
    )


@pytest.mark.parametrize("status", [103, 100])
def test_interim_answers_are_skipped(status):
    interim = b"HTTP/1.1 %d Whatever\r\nLink: </s.css>\r\n\r\n" % status
    assert (
        Playbook(ResponseStream())
        << Send()
        << interim + OK_5
        >> head()
        >> b"hello"
        >> ResponseComplete(keep_alive=True)
    )


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body_and_do_not_wait_for_a_close(status):
    assert (
        Playbook(ResponseStream())
        << Send()
        << b"HTTP/1.1 %d X\r\n\r\n" % status
        >> head(status, b"X", [])
        >> ResponseComplete(keep_alive=True)
        << Send()
        << OK_5
        >> head()
        >> b"hello"
        >> ResponseComplete(keep_alive=True)
    )


def test_a_close_delimited_body_is_complete_at_a_clean_close():
    assert (
        Playbook(ResponseStream())
        << Send()
        << b"HTTP/1.1 200 OK\r\n\r\nsome"
        >> head(headers=[])
        >> b"some"
        << b" more"
        >> b" more"
        << PeerClosed(clean=True)
        >> ResponseComplete(keep_alive=False)
    )


def test_a_close_delimited_body_cut_by_a_reset_is_an_error():
    assert (
        Playbook(ResponseStream())
        << Send()
        << b"HTTP/1.1 200 OK\r\n\r\nsome"
        >> head(headers=[])
        >> b"some"
        << PeerClosed(clean=False)
        >> ResponseFailed("reset")
    )


@pytest.mark.parametrize("clean", [True, False])
def test_a_length_delimited_body_cut_short_is_an_error_however_it_ends(clean):
    assert (
        Playbook(ResponseStream())
        << Send()
        << b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"
        >> head()
        >> b"hel"
        << PeerClosed(clean=clean)
        >> ResponseFailed("reset")
    )


def test_connection_close_is_not_kept_alive():
    assert (
        Playbook(ResponseStream())
        << Send()
        << b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        >> head(headers=[(b"Connection", b"close"), (b"Content-Length", b"0")])
        >> ResponseComplete(keep_alive=False)
    )


BAD_ANSWERS = {
    "garbage": b"NOT HTTP\r\n\r\n",
    "content-length next to chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "an invalid chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "an upgrade nobody asked for": b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
    b"Upgrade: websocket\r\n\r\n",
}


@pytest.mark.parametrize("answer", BAD_ANSWERS.values(), ids=BAD_ANSWERS.keys())
def test_malformed_answers_fail_as_protocol_errors(answer):
    s = ResponseStream()
    s.expect(head_only=False)
    events = s.receive(answer)
    assert events[-1] == ResponseFailed("protocol")
    assert not s.waiting


def test_garbage_after_a_whole_answer_keeps_the_answer_but_not_the_connection():
    assert (
        Playbook(ResponseStream())
        << Send()
        << OK_5 + b"\x00garbage"
        >> head()
        >> b"hello"
        >> ResponseComplete(keep_alive=False)
    )


def test_bytes_nobody_asked_for_are_a_protocol_error():
    assert Playbook(ResponseStream()) << b"HTTP/1.1 200 OK\r\n" >> ResponseFailed("protocol")


def test_a_close_before_any_answer_is_a_reset_and_nothing_arrived():
    s = ResponseStream()
    assert Playbook(s) << Send() << PeerClosed(clean=True) >> ResponseFailed("reset")
    assert not s.got_bytes  # what lets the pool retry an idempotent request


# -- framing the primary's answer for the client --------------------------------------------------
@dataclass(frozen=True)
class Framing:
    case: str
    lines: list[bytes]  # what the head says after its status line
    headers: list = field(default_factory=list)  # the primary's
    status: int = 200
    head_request: bool = False
    http11: bool = True
    close: bool = False
    chunked: bool = False  # expected: body pieces are to be chunk-framed
    closes: bool = False  # expected: the connection ends after this answer


FRAMING = [
    Framing("length kept", [b"Content-Length: 5"], CL_HEADERS),
    Framing("no length: re-chunked for 1.1", [b"Transfer-Encoding: chunked"], chunked=True),
    Framing(
        "no length: close-delimited for 1.0", [b"Connection: close"], http11=False, closes=True
    ),
    Framing("HEAD: no body framing", [], head_request=True),
    Framing("204: no body framing", [], status=204),
    Framing("304: no body framing", [], status=304),
    Framing(
        "1.0 kept alive says so",
        [b"Content-Length: 5", b"Connection: keep-alive"],
        CL_HEADERS,
        http11=False,
    ),
    Framing(
        "closing says so",
        [b"Content-Length: 5", b"Connection: close"],
        CL_HEADERS,
        close=True,
        closes=True,
    ),
    Framing(
        "chunked upstream: its TE is hop-by-hop, re-chunked",
        [b"Transfer-Encoding: chunked"],
        [(b"Transfer-Encoding", b"chunked")],
        chunked=True,
    ),
    Framing(
        "hop-by-hop and Connection-listed fields dropped",
        [b"Content-Length: 5"],
        [*CL_HEADERS, (b"Connection", b"x-hop"), (b"X-Hop", b"1"), (b"Keep-Alive", b"t=5")],
    ),
]


@pytest.mark.parametrize("want", FRAMING, ids=[f.case for f in FRAMING])
def test_frame_head(want: Framing):
    framed, chunked, closes = frame_head(
        want.status,
        b"Reason",
        want.headers,
        head_request=want.head_request,
        http11=want.http11,
        close=want.close,
    )
    assert framed == b"\r\n".join([b"HTTP/1.1 %d Reason" % want.status, *want.lines, b"", b""])
    assert (chunked, closes) == (want.chunked, want.closes)
