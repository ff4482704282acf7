"""The seeded fuzz invariants of test_http_fuzz, on the sans-io request side alone.

The same generated and damaged byte streams (test_http_fuzz's strategies), cut in arbitrary
pieces, go straight into a ``RequestStream``; a simulated driver answers what is queued,
sometimes at once and sometimes only after several reads (so the pipelining cap is reached).
No event loop and no fake primary: what is checked is the parsing layer alone. Whatever the
bytes:

* no exception escapes ``receive``/``answered``/``expired``, and no ``InternalError``;
* every request read is exactly the n-th message llhttp reads from the whole stream, with the
  same head fields (nothing from a body or a trailer: for undamaged streams, the marker text
  planted in bodies and trailers is in no URL and no header);
* every request read is answered, or the stream stopped with exactly one refusal; after a
  refusal or an upgrade nothing more is read;
* a request left half-read is refused (408) once its deadline has passed.

And a target's answers (``ResponseStream``), generated (1xx first, HEAD, 204/304, length,
chunked with trailers, close-delimited), damaged the same ways and cut the same ways: one
end event, last; at most one head, before any body piece, with no trailer field in it; and
for undamaged answers, the body whole and the end the framing says (a close-delimited body
cut by a reset is an error).
"""

from __future__ import annotations

import os

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_http_fuzz import (
    BODY_TEXT,
    FUZZ_SETTINGS,
    MARK,
    MAX_BODY_BYTES,
    MAX_HEADER_BYTES,
    mutated,
    reference,
    streams,
)
from test_http_fuzz import pieces as split

from shadowd.http1.request import (
    InternalError,
    ParsedRequest,
    Refused,
    RequestStream,
    SendData,
    UpgradeRequested,
)
from shadowd.http1.response import ResponseComplete, ResponseFailed, ResponseHead, ResponseStream

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 20.0
MAX_PIPELINED = 3


@settings(FUZZ_SETTINGS, max_examples=int(os.environ.get("SHADOWD_FUZZ_EXAMPLES", "500")))
@given(st.data())
def test_the_request_stream_keeps_the_invariants(data: st.DataObject) -> None:
    stream_bytes, damaged = data.draw(streams())
    chunks = data.draw(split(stream_bytes))
    # after which reads the driver answers everything queued (else it lets requests pile up)
    answer_after = data.draw(st.lists(st.booleans(), min_size=len(chunks), max_size=len(chunks)))
    stream = RequestStream(
        max_header_bytes=MAX_HEADER_BYTES,
        max_body_bytes=MAX_BODY_BYTES,
        max_pipelined=MAX_PIPELINED,
        header_timeout=HEADER_TIMEOUT,
        body_timeout=BODY_TIMEOUT,
    )
    now = 0.0
    received = []
    refusals: list[Refused] = []
    upgraded = False
    answered = 0
    for chunk, answer_now in zip(chunks, answer_after, strict=True):
        now += 0.001
        for happened in stream.receive(chunk, now):
            assert not isinstance(happened, InternalError), happened.exc
            assert not refusals and not upgraded, ("read after the end", happened)
            if isinstance(happened, ParsedRequest):
                received.append(happened)
            elif isinstance(happened, Refused):
                refusals.append(happened)
            elif isinstance(happened, UpgradeRequested):
                upgraded = True
            else:
                assert isinstance(happened, SendData)
        if answer_now or chunk is chunks[-1]:
            while stream.queue:
                stream.answered(now)
                answered += 1
    reading = reference(stream_bytes)
    event(f"damaged={damaged} received={min(len(received), 3)} refused={len(refusals)}")
    event(f"refusal={refusals[0].reason if refusals else None} upgraded={upgraded}")

    # Each request read is llhttp's n-th message, with that message's head fields exactly.
    assert len(received) <= reading.complete
    for n, request in enumerate(received):
        assert [(name.lower(), value) for name, value in request.headers] == reading.heads[n]
        if not damaged:
            assert MARK not in request.url
            assert all(MARK not in name + value for name, value in request.headers)

    # Answered, or stopped with one refusal (an upgrade hands the connection over).
    assert answered == len(received)
    assert len(refusals) <= 1
    if refusals or upgraded:
        assert stream.stopped
        assert stream.receive(b"GET / HTTP/1.1\r\n\r\n", now) == []
    elif len(reading.heads) == reading.complete:
        assert len(received) == reading.complete  # nothing refused: every message was read

    # A half-read request does not outlive its deadline.
    if not stream.stopped and len(reading.heads) > reading.complete:
        late = stream.expired(now + max(HEADER_TIMEOUT, BODY_TIMEOUT) + 1)
        assert late is not None and late.status == 408


# -- the response side -----------------------------------------------------------------------------
INTERIM_ANSWERS = [
    b"",
    b"",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 103 Hints\r\nLink: </a>\r\n\r\n",
]


@st.composite
def answers(draw: st.DrawFn) -> tuple[bytes, bool, bytes | None, bool]:
    """An answer's bytes, whether it answers HEAD, the body it carries (None: none expected)
    and whether its end is the connection's close."""
    interim = draw(
        st.sampled_from(
            [
                b"",
                b"",
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 103 Hints\r\nLink: </a>\r\n\r\n",
            ]
        )
    )
    status = draw(st.sampled_from([200, 200, 201, 204, 304, 404, 500]))
    head_only = draw(st.integers(0, 4)) == 0
    body = draw(BODY_TEXT)
    framing = draw(st.sampled_from(["length", "chunked", "close"]))
    head = [b"HTTP/1.1 %d Reason Phrase" % status, b"X-Head: 1"]
    if status in (204, 304):
        framing, body = "none", b""
    payload = b""
    if framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    elif framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n"
        payload += b"X-" + MARK + b": trailer\r\n\r\n"
    else:
        payload = body
    if head_only:
        payload = b""  # a HEAD answer never has a body, whatever its framing says
    expected = None if head_only or framing == "none" else body
    return (
        interim + b"\r\n".join(head) + b"\r\n\r\n" + payload,
        head_only,
        expected,
        (framing == "close" and not head_only),
    )


@settings(FUZZ_SETTINGS, max_examples=int(os.environ.get("SHADOWD_FUZZ_EXAMPLES", "500")))
@given(st.data())
def test_the_response_stream_keeps_the_invariants(data: st.DataObject) -> None:
    answer, head_only, expected_body, close_delimited = data.draw(answers())
    damaged = data.draw(st.booleans())
    if damaged:
        answer = data.draw(mutated(answer))
    chunks = data.draw(split(answer))
    clean_close = data.draw(st.booleans())
    stream = ResponseStream()
    stream.expect(head_only=head_only)
    said: list[object] = []
    for chunk in chunks:
        said.extend(stream.receive(chunk))
        if any(isinstance(e, ResponseComplete | ResponseFailed) for e in said):
            break  # the driver hands the connection back (or drops it) at the answer's end
    else:
        said.extend(stream.closed(clean=clean_close))
    ends = [e for e in said if isinstance(e, ResponseComplete | ResponseFailed)]
    heads = [e for e in said if isinstance(e, ResponseHead)]
    event(f"damaged={damaged} end={type(ends[0]).__name__ if ends else None}")

    # One end, last; at most one head, before any body piece.
    assert len(ends) == 1 and said[-1] is ends[0], said
    assert len(heads) <= 1
    if heads:
        assert all(type(e) is not bytes for e in said[: said.index(heads[0])])
        assert all(MARK not in name + value for name, value in heads[0].headers)
    assert not stream.waiting
    if damaged:
        return
    # Undamaged: the body arrives whole and the end is what the framing says.
    body = b"".join(e for e in said if type(e) is bytes)
    (head,) = heads
    assert head.reason == b"Reason Phrase"
    if close_delimited and not clean_close:
        assert ends[0] == ResponseFailed("reset")
    else:
        assert isinstance(ends[0], ResponseComplete), said
        assert body == (expected_body or b"")
