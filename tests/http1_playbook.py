"""A compact DSL for the sans-io HTTP/1 layer, after mitmproxy's layer tests (tutils.Playbook):

    assert (
        Playbook(stream)
        << b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n"   # the client sends
        >> Got(b"GET", b"/")                          # the stream says a request was read
        << Answered()                                 # its answer went out
    )

``<<`` is something that happens to the stream (bytes from the peer, or one of the inputs
below); ``>>`` is an event it must have returned, in order (for a response stream, ``>> b"..."``
is a piece of the answer's body). Every event returned must be
expected, and nothing else: the playbook fails at the first step that does not match, naming
it and listing what the stream said.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from shadowd.exchange import Headers
from shadowd.http1.request import ParsedRequest, RequestEvent, RequestStream
from shadowd.http1.response import ResponseStream


# -- inputs ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bytewise:
    """The same bytes, one read per byte (what a slow client or a tiny TCP segment does)."""

    data: bytes


@dataclass(frozen=True)
class Answered:
    """The oldest queued request has been answered (``RequestStream.answered``)."""


@dataclass(frozen=True)
class Tick:
    """``seconds`` pass; the stream is asked whether a deadline expired."""

    seconds: float


@dataclass(frozen=True)
class Send:
    """A request leaves on the upstream connection (``ResponseStream.expect``)."""

    head_only: bool = False


@dataclass(frozen=True)
class PeerClosed:
    """The upstream peer closed: FIN (clean) or RST (reset)."""

    clean: bool = True


# -- matchers --------------------------------------------------------------------------------------
@dataclass
class Got:
    """A request read in full; fields left None are not checked."""

    method: bytes
    url: bytes
    headers: Headers | None = None
    body: bytes | None = None
    keep_alive: bool | None = None
    upgrade: bytes | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ParsedRequest):
            return NotImplemented
        req = other
        return (
            req.method == self.method
            and req.url == self.url
            and (self.headers is None or req.headers == self.headers)
            and (self.body is None or req.body == self.body)
            and (self.keep_alive is None or req.keep_alive == self.keep_alive)
            and (self.upgrade is None or req.upgrade == self.upgrade)
        )


@dataclass
class Playbook:
    stream: RequestStream | ResponseStream
    steps: list[tuple[str, Any]] = field(default_factory=list)
    now: float = 1000.0

    def __lshift__(self, happening: Any) -> Playbook:
        self.steps.append(("<<", happening))
        return self

    def __rshift__(self, expected: Any) -> Playbook:
        self.steps.append((">>", expected))
        return self

    def __bool__(self) -> bool:
        said: deque[Any] = deque()
        history: list[str] = []
        for i, (direction, item) in enumerate(self.steps):
            if direction == "<<":
                if said:
                    raise AssertionError(
                        f"step {i} ({item!r}): unexpected events before it: {list(said)}\n"
                        + "\n".join(history)
                    )
                events = self._happen(item)
                history.append(f"<< {item!r}")
                history.extend(f"   -> {event!r}" for event in events)
                said.extend(events)
            else:
                if not said:
                    raise AssertionError(
                        f"step {i}: expected {item!r}, the stream said nothing more\n"
                        + "\n".join(history)
                    )
                actual = said.popleft()
                if not (item == actual):
                    raise AssertionError(
                        f"step {i}: expected {item!r}, got {actual!r}\n" + "\n".join(history)
                    )
        if said:
            raise AssertionError(
                f"unexpected events at the end: {list(said)}\n" + "\n".join(history)
            )
        return True

    def _happen(self, item: Any) -> list[Any]:
        stream = self.stream
        if isinstance(stream, RequestStream):
            return self._to_request_stream(stream, item)
        return self._to_response_stream(stream, item)

    def _to_request_stream(self, stream: RequestStream, item: Any) -> list[RequestEvent]:
        if isinstance(item, bytes):
            return list(stream.receive(item, self.now))
        if isinstance(item, Bytewise):
            events: list[RequestEvent] = []
            for i in range(len(item.data)):
                events.extend(stream.receive(item.data[i : i + 1], self.now))
            return events
        if isinstance(item, Answered):
            return list(stream.answered(self.now))
        if isinstance(item, Tick):
            self.now += item.seconds
            refusal = stream.expired(self.now)
            return [] if refusal is None else [refusal]
        raise TypeError(f"a request stream cannot take {item!r}")

    def _to_response_stream(self, stream: ResponseStream, item: Any) -> list[Any]:
        if isinstance(item, bytes):
            return list(stream.receive(item))
        if isinstance(item, Bytewise):
            events: list[Any] = []
            for i in range(len(item.data)):
                events.extend(stream.receive(item.data[i : i + 1]))
            return events
        if isinstance(item, Send):
            stream.expect(head_only=item.head_only)
            return []
        if isinstance(item, PeerClosed):
            return list(stream.closed(clean=item.clean))
        raise TypeError(f"a response stream cannot take {item!r}")
