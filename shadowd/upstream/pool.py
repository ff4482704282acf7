"""Keep-alive connections to one target, shared by every request sent there.

Bounded: at most ``max_connections`` open; beyond that, calls wait their turn (their deadline
still runs). Every call has a deadline that covers waiting, connecting and answering; when it
passes, the error says which: ``pool_timeout`` (no free connection), ``connect_timeout``
(connecting, also past ``connect_timeout``), ``timeout`` (sent, the answer did not complete).

Every call of a pool has the same timeout, so deadlines fall in the order calls were sent:
the pool keeps its calls in one queue and one timer for the oldest, rather than a timer per
call (a ``call_later`` and its ``cancel`` per call: 0.5-0.9 µs of the pool's ~10 µs of CPU a
request, measured against nginx; the ingress makes three calls per mirrored request).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections import deque

from shadowd.config import TargetConfig
from shadowd.exchange import ERROR_CONNECT, ERROR_CONNECT_TIMEOUT, ERROR_POOL_TIMEOUT
from shadowd.tasks import TaskGroup
from shadowd.upstream.connection import Call, ResponseSink, UpstreamConnection

LOG = logging.getLogger("shadowd.upstream")

_SWEEP_MIN = 1024  # calls queued for their deadline before finished ones are swept out
_TIMER_SLACK = 0.002  # uvloop's timers have millisecond resolution and may fire a bit early
CONNECT_LOG_EVERY = 10.0  # seconds between two warnings of failed connects to one target


def _ssl_context(target: TargetConfig) -> ssl.SSLContext | None:
    if target.scheme != "https":
        return None
    ctx = ssl.create_default_context(cafile=str(target.ca_file) if target.ca_file else None)
    if not target.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _connect_problem(exc: BaseException, target: TargetConfig) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate not trusted ({exc.verify_message}); trust its CA with"
            f" [targets.{target.name}] ca_file, or set tls_verify = false"
        )
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)  # one wording whichever loop raised it
    return str(exc) or type(exc).__name__


class UpstreamPool:
    def __init__(self, target: TargetConfig, tasks: TaskGroup) -> None:
        self.target = target
        self._tasks = tasks
        self._loop = asyncio.get_running_loop()
        self._ssl = _ssl_context(target)
        self._idle: list[UpstreamConnection] = []
        self._waiting: deque[Call] = deque()
        self._open = 0  # connections open or being opened
        self._closing = False
        # Calls in the order sent (so by deadline); finished ones leave from the front, or
        # in a sweep when a slow one at the front holds many finished ones behind it.
        self._deadlines: deque[Call] = deque()
        self._sweep_at = _SWEEP_MIN
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._connect_logged_at = -CONNECT_LOG_EVERY  # loop time of the last warning
        self._connect_unlogged = 0  # failed connects since that warning

    def send(
        self,
        payload: bytes,
        sink: ResponseSink,
        *,
        head_only: bool = False,
        retryable: bool = False,
    ) -> Call:
        """Send ``payload`` (a whole serialized request) and report the answer to ``sink``."""
        call = Call(payload, sink, head_only, retryable)
        call.started = now = self._loop.time()
        deadlines = self._deadlines
        deadlines.append(call)
        while deadlines[0].done:  # not empty: this call is in it, and not done
            deadlines.popleft()
        if len(deadlines) >= self._sweep_at:
            self._deadlines = deadlines = deque(c for c in deadlines if not c.done)
            self._sweep_at = max(_SWEEP_MIN, 2 * len(deadlines))
        if self._deadline_timer is None:
            self._deadline_timer = self._loop.call_at(now + self.target.timeout, self._expire)
        self._dispatch(call)
        return call

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl

    def retry(self, call: Call) -> None:
        self._dispatch(call)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished an answer and may serve the next request."""
        waiting = self._waiting
        while waiting:
            call = waiting.popleft()
            if not call.done:
                conn.start(call)
                return
        if self._closing:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
            return
        self._idle.append(conn)

    def connection_closed(self, conn: UpstreamConnection) -> None:
        self._open -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        self._serve_waiting()

    def close(self) -> None:
        """Retire the pool: idle connections close now, busy ones once nothing waits. The
        requests already waiting for a connection are still served: a reload swaps pools
        under load, and what was accepted before it must not fail (measured before: 10 % of
        requests answered 502 during a reload that changed a primary setting)."""
        self._closing = True
        for conn in self._idle:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()

    # -- internals ------------------------------------------------------------------------
    def _dispatch(self, call: Call) -> None:
        idle = self._idle
        while idle:
            conn = idle.pop()  # most recently used first: warm, and lets the others expire
            if not conn.closed:
                conn.start(call)
                return
        # A retired pool still serves what reaches it (retries of calls it had accepted).
        if self._open < self.target.max_connections:
            self._open += 1
            call.connecting = True
            self._tasks.spawn(self._connect(call), name=f"connect-{self.target.name}")
        else:
            self._waiting.append(call)

    def _serve_waiting(self) -> None:
        waiting = self._waiting
        while waiting and waiting[0].done:
            waiting.popleft()
        if waiting and self._open < self.target.max_connections:
            self._open += 1
            call = waiting.popleft()
            call.connecting = True
            self._tasks.spawn(self._connect(call), name=f"connect-{self.target.name}")

    async def _connect(self, call: Call) -> None:
        target = self.target
        try:
            async with asyncio.timeout(target.connect_timeout):
                _, conn = await self._loop.create_connection(
                    lambda: UpstreamConnection(self),
                    target.host,
                    target.port,
                    ssl=self._ssl,
                    server_hostname=target.host if self._ssl else None,
                )
        except TimeoutError:
            self._open -= 1
            self._connect_failed(None)
            call.finish_error(ERROR_CONNECT_TIMEOUT)
            self._serve_waiting()
            return
        except (OSError, ssl.SSLError) as exc:
            self._open -= 1
            self._connect_failed(exc)
            call.finish_error(ERROR_CONNECT)
            self._serve_waiting()
            return
        call.connecting = False
        if call.done:  # its deadline passed while connecting: the connection serves others
            self.release(conn)
        else:
            conn.start(call)

    def _connect_failed(self, exc: BaseException | None) -> None:
        """Say why a target cannot be reached (``exc`` None: the connect timeout), at most
        every CONNECT_LOG_EVERY seconds: the client sees only a 502 or 504, the metrics
        only a kind (``connect``); without the reason a refused port and an untrusted
        certificate look the same. Between two warnings, a failure costs a counter."""
        now = self._loop.time()
        if now - self._connect_logged_at < CONNECT_LOG_EVERY:
            self._connect_unlogged += 1
            return
        target = self.target
        problem = (
            f"no connection within connect_timeout ({target.connect_timeout:g} s)"
            if exc is None
            else _connect_problem(exc, target)
        )
        LOG.warning(
            "cannot connect to %s at %s:%d: %s",
            target.name,
            target.host,
            target.port,
            problem,
            extra={"target": target.name, "failed_since_last": self._connect_unlogged},
        )
        self._connect_logged_at = now
        self._connect_unlogged = 0

    def _expire(self) -> None:
        """The oldest calls' deadlines: time out those past theirs, wake up for the next."""
        self._deadline_timer = None
        timeout = self.target.timeout
        now = self._loop.time()
        # A timed-out call's sink may send again (and sweep the queue) meanwhile: re-read it.
        while deadlines := self._deadlines:
            call = deadlines[0]
            if call.done:
                deadlines.popleft()
                continue
            due = call.started + timeout
            if due > now + _TIMER_SLACK:
                self._wake_at(due)
                return
            deadlines.popleft()
            self._on_timeout(call)

    def _wake_at(self, due: float) -> None:
        if self._deadline_timer is not None:  # set by a send during _expire: for a later call
            self._deadline_timer.cancel()
        self._deadline_timer = self._loop.call_at(due, self._expire)

    def _on_timeout(self, call: Call) -> None:
        if call.done:
            return
        if call.connection is not None:
            call.connection.on_timeout()
        else:
            call.finish_error(ERROR_CONNECT_TIMEOUT if call.connecting else ERROR_POOL_TIMEOUT)
