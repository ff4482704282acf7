"""Turning a stream of answer chunks into an ``Answer``, keeping memory bounded."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from shadowd.exchange import CUT_DIGEST, Answer, Headers

if TYPE_CHECKING:
    from shadowd.upstream.connection import Call


class BodyKeeper:
    """Keeps a body up to ``limit`` bytes; past it, only a running digest and the size; past
    ``cut_at`` (``[mirror] max_answer_bytes``), only the size, and ``cut`` says so."""

    __slots__ = ("_chunks", "_cut_at", "_hasher", "_limit", "cut", "size")

    def __init__(self, limit: int, cut_at: int | None = None) -> None:
        self._limit = limit
        self._cut_at = sys.maxsize if cut_at is None else cut_at
        self._chunks: list[bytes] = []
        self._hasher: hashlib.blake2b | None = None
        self.size = 0
        self.cut = False

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.cut:
            return
        if self.size > self._cut_at:
            self.cut = True
            self._chunks = []
            self._hasher = None
        elif self._hasher is not None:
            self._hasher.update(chunk)
        elif self.size <= self._limit:
            self._chunks.append(chunk)
        else:
            hasher = hashlib.blake2b(digest_size=16)
            for kept in self._chunks:
                hasher.update(kept)
            hasher.update(chunk)
            self._chunks = []
            self._hasher = hasher

    def fill(self, answer: Answer) -> None:
        answer.body_size = self.size
        if self.cut:
            answer.body_digest = CUT_DIGEST
        elif self._hasher is not None:
            answer.body_digest = self._hasher.hexdigest()
        else:
            chunks = self._chunks
            answer.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)


class AnswerCollector:
    """A ``ResponseSink`` that builds an ``Answer`` and hands it to ``done`` when it ends.
    Given ``cut_at``, it stops reading once the body passes it: ``call`` (the call it was
    sent with) is cancelled and the answer ends there, cut (``BodyKeeper``)."""

    __slots__ = ("_answer", "_body", "_done", "_started", "call")

    def __init__(
        self,
        target: str,
        body_limit: int,
        done: Callable[[Answer], None],
        cut_at: int | None = None,
    ) -> None:
        self._answer = Answer(target=target)
        self._body = BodyKeeper(body_limit, cut_at)
        self._done = done
        self._started = time.perf_counter()
        self.call: Call | None = None

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self._answer.status = status
        self._answer.headers = headers

    def on_response_body(self, chunk: bytes) -> None:
        body = self._body
        body.add(chunk)
        if body.cut and self.call is not None and not self.call.done:
            # The rest would tell the diff nothing more, and reading it costs the loop that
            # relays production: the connection is spent, the answer ends here.
            self.call.cancel()
            self.on_response_complete()

    def on_response_flush(self) -> None:
        pass

    def on_response_complete(self) -> None:
        self.call = None  # the call holds this sink: no cycle left for the collector to find
        answer = self._answer
        answer.latency = time.perf_counter() - self._started
        self._body.fill(answer)
        self._done(answer)

    def on_response_error(self, kind: str) -> None:
        self.call = None
        answer = self._answer
        answer.latency = time.perf_counter() - self._started
        answer.status = 0
        answer.error = kind
        self._done(answer)
