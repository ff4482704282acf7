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
"""

from __future__ import annotations

import os

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_http_fuzz import FUZZ_SETTINGS, MARK, MAX_BODY_BYTES, MAX_HEADER_BYTES, reference, streams
from test_http_fuzz import pieces as split

from shadowd.http1.request import (
    InternalError,
    ParsedRequest,
    Refused,
    RequestStream,
    SendData,
    UpgradeRequested,
)

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
