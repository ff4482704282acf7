"""Starting real third-party peers (nginx) and shadowd processes for integration tests."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
CURL = shutil.which("curl")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_args(profile: object, *extra: str) -> list[str]:
    """Headless Chromium as this machine can run it (root: no sandbox; a closed network:
    no background connections), with its own profile folder."""
    if CHROMIUM is None:
        pytest.fail("chromium is not installed: run `make test` (scripts/install-system-deps)")
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-quic",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        *extra,
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return


class Nginx:
    """An nginx master with its own prefix directory, in the foreground, one worker."""

    def __init__(self, http_block: str) -> None:
        if NGINX is None:
            pytest.fail("nginx is not installed: run `make test` (scripts/install-system-deps)")
        self.prefix = Path(tempfile.mkdtemp(prefix="shadowd-nginx-"))
        (self.prefix / "logs").mkdir()
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            "worker_processes 1;\n"
            "daemon off;\n"
            f"pid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/logs/error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {self.prefix}/body;\n"
            f"  proxy_temp_path {self.prefix}/proxy;\n"
            f"{http_block}\n"
            "}\n"
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, port: int) -> None:
        self.process = await asyncio.create_subprocess_exec(
            NGINX,
            "-p",
            str(self.prefix),
            "-c",
            str(self.conf),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_for_port(port)
        except TimeoutError:
            await self.stop()
            raise AssertionError(f"nginx did not start: {self.error_log()}") from None

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text() if path.exists() else ""

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)


async def curl(url: str, *args: str) -> tuple[int, bytes, bytes]:
    """Run curl; returns (exit code, stdout, stderr)."""
    if CURL is None:
        pytest.fail("curl is not installed: run `make test` (scripts/install-system-deps)")
    process = await asyncio.create_subprocess_exec(
        CURL,
        "-sS",
        "--max-time",
        "10",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode or 0, out, err


class ShadowdProcess:
    """``shadowd run -c FILE`` as a real child process."""

    def __init__(
        self, config_path: Path, env: dict[str, str] | None = None, open_files: int | None = None
    ) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.open_files = open_files  # RLIMIT_NOFILE, soft and hard, as `ulimit -n` sets it
        self._stderr: bytes | None = None
        self.process: asyncio.subprocess.Process | None = None

    def _limit_open_files(self) -> None:  # in the child, before exec
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shadowd",
            "run",
            "-c",
            str(self.config_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
            preexec_fn=self._limit_open_files if self.open_files else None,
        )

    async def wait(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def output(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        if self._stderr is not None:  # read already, by kill()
            return self._stderr.decode()
        return (await self.process.stderr.read()).decode()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            # Read the pipes to their end: a transport the test's loop never saw close is
            # reported unclosed when collected, in whichever test that happens to be.
            async with asyncio.timeout(10):
                self._stderr = (await self.process.communicate())[1]


class EndlessAnswer:
    """A target whose every answer starts with ``first`` and then repeats ``block`` until the
    peer goes away (an endless head, or a body that never ends): ``sent`` holds how many
    bytes each answer got out, ``cut_off`` is set once one was cut off."""

    def __init__(self, first: bytes, block: bytes) -> None:
        self.first, self.block = first, block
        self.sent: list[int] = []
        self.cut_off = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> asyncio.Server:
        self.server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self.server

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.first)
        total = 0
        try:
            while total < 64 << 30:
                writer.write(self.block)
                total += len(self.block)
                await writer.drain()
        except ConnectionError:
            pass
        self.sent.append(total)
        self.cut_off.set()
        writer.transport.abort()
