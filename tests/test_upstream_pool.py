"""The upstream pool and its connections against a raw server written here: real loopback
sockets, every byte the server sends chosen by the test (no HTTP server library in between),
so stale connections, resets and odd framings happen exactly when the test says."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shadowd.config import target_from_url
from shadowd.exchange import ERROR_POOL_TIMEOUT, ERROR_RESET, ERROR_TIMEOUT, Answer, Headers
from shadowd.tasks import TaskGroup
from shadowd.upstream.collect import AnswerCollector
from shadowd.upstream.pool import UpstreamPool

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """One accepted connection, as the script sees it."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index  # 0 for the first connection the pool opened, 1 for the next...
        self.reader = reader
        self.writer = writer

    async def request(self) -> bytes:
        """The next request head (the pool's requests here have no bodies)."""
        return await self.reader.readuntil(b"\r\n\r\n")

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def reset(self) -> None:
        """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


class RawServer:
    """Runs ``scripts[i]`` on the i-th connection accepted; records the request heads seen."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = list(scripts)
        self.accepted = 0
        self.seen: list[tuple[int, bytes]] = []  # (connection index, request line)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.accepted
        self.accepted += 1
        peer = Peer(index, reader, writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self.scripts[index](peer)
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    def record(self, peer: Peer, head: bytes) -> bytes:
        line = head.split(b"\r\n", 1)[0]
        self.seen.append((peer.index, line))
        return line


@pytest.fixture
async def tasks() -> AsyncIterator[TaskGroup]:
    group = TaskGroup()
    yield group
    await group.cancel_all()


def pool_for(server: RawServer, tasks: TaskGroup, **overrides: object) -> UpstreamPool:
    target = target_from_url("primary", f"http://127.0.0.1:{server.port}", **overrides)
    return UpstreamPool(target, tasks)


def send(pool: UpstreamPool, method: bytes, path: bytes) -> asyncio.Future[Answer]:
    done: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    pool.send(
        method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        AnswerCollector("primary", 1 << 20, done.set_result),
        head_only=method == b"HEAD",
        retryable=method in (b"GET", b"HEAD"),
    )
    return done


async def answer_of(done: asyncio.Future[Answer]) -> Answer:
    async with asyncio.timeout(10):
        return await done


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# -- stale connections ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_an_idempotent_request_on_a_stale_connection_goes_again_on_a_fresh_one(tasks, how):
    async def answers_once_then_drops_the_next(peer: Peer) -> None:
        server.record(peer, await peer.request())
        peer.send(ok(b"first"))
        server.record(peer, await peer.request())  # reused: the target closes it unanswered
        if how == "rst":
            peer.reset()

    async def answers(peer: Peer) -> None:
        server.record(peer, await peer.request())
        peer.send(ok(b"fresh"))

    async with RawServer(answers_once_then_drops_the_next, answers) as server:
        pool = pool_for(server, tasks)
        assert (await answer_of(send(pool, b"GET", b"/a"))).body == b"first"
        second = await answer_of(send(pool, b"GET", b"/b"))
        pool.close()
    assert (second.status, second.body, second.error) == (200, b"fresh", None)
    assert server.seen == [
        (0, b"GET /a HTTP/1.1"),
        (0, b"GET /b HTTP/1.1"),
        (1, b"GET /b HTTP/1.1"),
    ]


async def test_a_post_on_a_stale_connection_is_not_sent_again(tasks):
    async def answers_once_then_drops_the_next(peer: Peer) -> None:
        server.record(peer, await peer.request())
        peer.send(ok(b"first"))
        server.record(peer, await peer.request())

    async def answers(peer: Peer) -> None:
        server.record(peer, await peer.request())
        peer.send(ok(b"fresh"))

    async with RawServer(answers_once_then_drops_the_next, answers) as server:
        pool = pool_for(server, tasks)
        assert (await answer_of(send(pool, b"GET", b"/a"))).body == b"first"
        post = await answer_of(send(pool, b"POST", b"/order"))
        # The next request opens the second connection: the POST never went there.
        assert (await answer_of(send(pool, b"GET", b"/c"))).body == b"fresh"
        pool.close()
    assert post.error == ERROR_RESET
    assert server.seen == [
        (0, b"GET /a HTTP/1.1"),
        (0, b"POST /order HTTP/1.1"),
        (1, b"GET /c HTTP/1.1"),
    ]


async def test_a_request_on_a_new_connection_closed_unanswered_is_not_retried(tasks):
    # Never answered on a fresh connection: the target refuses it, it did not go stale.
    async def drops(peer: Peer) -> None:
        server.record(peer, await peer.request())

    async with RawServer(drops, drops) as server:
        pool = pool_for(server, tasks)
        answer = await answer_of(send(pool, b"GET", b"/a"))
        pool.close()
    assert answer.error == ERROR_RESET
    assert server.seen == [(0, b"GET /a HTTP/1.1")]


# -- the waiting queue ---------------------------------------------------------------------------
async def test_calls_beyond_max_connections_wait_and_are_served_in_order(tasks):
    async def answers_each(peer: Peer) -> None:
        for _ in range(4):
            line = server.record(peer, await peer.request())
            peer.send(ok(line.split(b" ")[1]))

    async with RawServer(answers_each) as server:
        pool = pool_for(server, tasks, max_connections=1)
        calls = [send(pool, b"GET", b"/%d" % i) for i in range(4)]
        answers = [await answer_of(call) for call in calls]
        pool.close()
    assert [a.body for a in answers] == [b"/0", b"/1", b"/2", b"/3"]
    assert server.accepted == 1
    assert [line for _, line in server.seen] == [b"GET /%d HTTP/1.1" % i for i in range(4)]


async def test_a_call_waiting_for_a_connection_past_its_deadline_is_a_pool_timeout(tasks):
    release = asyncio.Event()

    async def holds_the_first_answer(peer: Peer) -> None:
        server.record(peer, await peer.request())
        await release.wait()

    async with RawServer(holds_the_first_answer) as server:
        pool = pool_for(server, tasks, max_connections=1, timeout=0.5)
        busy = send(pool, b"GET", b"/slow")
        waiting = send(pool, b"GET", b"/queued")
        answers = [await answer_of(busy), await answer_of(waiting)]
        release.set()
        pool.close()
    # The one sent waited for its answer; the one queued never had a connection.
    assert [a.error for a in answers] == [ERROR_TIMEOUT, ERROR_POOL_TIMEOUT]
    assert server.seen == [(0, b"GET /slow HTTP/1.1")]


# -- deadlines: one queue and one timer per pool ------------------------------------------------
async def test_each_call_times_out_at_its_own_deadline_counted_from_its_send(tasks):
    async def never_answers(peer: Peer) -> None:
        server.record(peer, await peer.request())
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    async with RawServer(never_answers, never_answers) as server:
        pool = pool_for(server, tasks, timeout=0.6)
        first_sent = loop.time()
        first = send(pool, b"GET", b"/first")
        await asyncio.sleep(0.3)  # the second leaves later, so its deadline is later
        second_sent = loop.time()
        second = send(pool, b"GET", b"/second")
        ended = {}
        for name, call in (("first", first), ("second", second)):
            answer = await answer_of(call)
            ended[name] = loop.time()
            assert answer.error == ERROR_TIMEOUT
        pool.close()
    # each at its own deadline: never before it (but for the timer's slack; the second not
    # at the first's), after it by no more than a busy host's scheduling delay
    assert 0.6 - 0.003 <= ended["first"] - first_sent < 0.6 + 2.0
    assert 0.6 - 0.003 <= ended["second"] - second_sent < 0.6 + 2.0


async def test_a_slow_call_does_not_keep_the_finished_ones_behind_it_in_memory(tasks):
    """A call that never ends sits at the head of the deadline queue; the thousands that
    finish behind it are swept out instead of waiting there for its timeout."""
    release = asyncio.Event()

    async def holds_its_answer(peer: Peer) -> None:
        await peer.request()
        await release.wait()

    async def answers_each(peer: Peer) -> None:
        while True:
            await peer.request()
            peer.send(ok(b"x"))

    async with RawServer(holds_its_answer, answers_each) as server:
        pool = pool_for(server, tasks, timeout=30.0)
        stuck = send(pool, b"GET", b"/stuck")
        for _ in range(5000):
            answer = await answer_of(send(pool, b"GET", b"/fast"))
            assert answer.status == 200
        queued = len(pool._deadlines)
        release.set()
        pool.close()
    assert not stuck.done()
    assert queued <= 1024 + 1  # the stuck one, and at most one sweep's worth of finished


# -- framing on a kept-alive connection ----------------------------------------------------------
async def test_a_head_answer_with_content_length_leaves_the_connection_ready_for_the_next(tasks):
    async def head_then_get(peer: Peer) -> None:
        server.record(peer, await peer.request())
        # The length of the body a GET would get; a HEAD answer has none.
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Kind: head\r\n\r\n")
        server.record(peer, await peer.request())
        peer.send(ok(b"hello"))

    async with RawServer(head_then_get) as server:
        pool = pool_for(server, tasks, max_connections=1)
        head = await answer_of(send(pool, b"HEAD", b"/h"))
        get = await answer_of(send(pool, b"GET", b"/g"))
        pool.close()
    assert (head.status, head.body, head.error) == (200, b"", None)
    assert (b"X-Kind", b"head") in head.headers
    assert (get.status, get.body, get.error) == (200, b"hello", None)
    assert server.accepted == 1  # the same connection carried both


class Recorder:
    """A sink that says when the first body bytes have arrived."""

    def __init__(self) -> None:
        self.body = b""
        self.got_body = asyncio.Event()
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        pass

    def on_response_body(self, chunk: bytes) -> None:
        self.body += chunk
        self.got_body.set()

    def on_response_flush(self) -> None:
        pass

    def on_response_complete(self) -> None:
        self.ended.set_result("complete")

    def on_response_error(self, kind: str) -> None:
        self.ended.set_result(kind)


@pytest.mark.parametrize(("how", "ending"), [("fin", "complete"), ("rst", ERROR_RESET)])
async def test_a_close_delimited_body_is_complete_at_fin_and_cut_short_at_rst(tasks, how, ending):
    body_read = asyncio.Event()

    async def close_delimited(peer: Peer) -> None:
        server.record(peer, await peer.request())
        peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial")
        await body_read.wait()  # the pool has read the bytes: the close cannot overtake them
        if how == "rst":
            peer.reset()

    async with RawServer(close_delimited) as server:
        pool = pool_for(server, tasks)
        sink = Recorder()
        pool.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", sink)
        async with asyncio.timeout(10):
            await sink.got_body.wait()
            body_read.set()
            assert await sink.ended == ending
        pool.close()
    assert sink.body == b"partial"


# -- why a target cannot be reached ---------------------------------------------------------------
async def test_failed_connects_say_why_at_most_every_ten_seconds(tasks, caplog, monkeypatch):
    # The client sees a 502 and the metrics a kind ("connect"): the log is where a refused
    # port and an untrusted certificate differ, once per target per CONNECT_LOG_EVERY.
    from shadowd.exchange import ERROR_CONNECT
    from shadowd.upstream import pool as pool_module

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = UpstreamPool(target_from_url("candidate", f"http://127.0.0.1:{port}"), tasks)
    caplog.set_level("WARNING", logger="shadowd.upstream")
    for _ in range(3):
        answer = await answer_of(send(pool, b"GET", b"/"))
        assert answer.error == ERROR_CONNECT
    (first,) = [r for r in caplog.records if r.name == "shadowd.upstream"]
    assert f"cannot connect to candidate at 127.0.0.1:{port}" in first.getMessage()
    assert "refused" in first.getMessage().lower()
    monkeypatch.setattr(pool_module, "CONNECT_LOG_EVERY", 0.0)  # the next one is due
    await answer_of(send(pool, b"GET", b"/"))
    warnings = [r for r in caplog.records if r.name == "shadowd.upstream"]
    assert len(warnings) == 2
    assert warnings[1].failed_since_last == 2  # the two in between were counted, not logged
