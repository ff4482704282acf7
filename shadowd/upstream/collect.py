"""Turning a stream of answer chunks into an ``Answer``, keeping memory bounded."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from shadowd.exchange import Answer, Headers


class BodyKeeper:
    """Keeps a body up to ``limit`` bytes; past it, only a running digest and the size."""

    __slots__ = ("_chunks", "_hasher", "_limit", "size")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._hasher: hashlib.blake2b | None = None
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._hasher is not None:
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
        if self._hasher is not None:
            answer.body_digest = self._hasher.hexdigest()
        else:
            chunks = self._chunks
            answer.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)


class AnswerCollector:
    """A ``ResponseSink`` that builds an ``Answer`` and hands it to ``done`` when it ends."""

    __slots__ = ("_answer", "_body", "_done", "_started")

    def __init__(self, target: str, body_limit: int, done: Callable[[Answer], None]) -> None:
        self._answer = Answer(target=target)
        self._body = BodyKeeper(body_limit)
        self._done = done
        self._started = time.perf_counter()

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self._answer.status = status
        self._answer.headers = headers

    def on_response_body(self, chunk: bytes) -> None:
        self._body.add(chunk)

    def on_response_flush(self) -> None:
        pass

    def on_response_complete(self) -> None:
        answer = self._answer
        answer.latency = time.perf_counter() - self._started
        self._body.fill(answer)
        self._done(answer)

    def on_response_error(self, kind: str) -> None:
        answer = self._answer
        answer.latency = time.perf_counter() - self._started
        answer.status = 0
        answer.error = kind
        self._done(answer)
