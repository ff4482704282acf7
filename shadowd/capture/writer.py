"""Recording exchanges to capture files off the request path.

``submit`` is called on the event loop for every exchange: it only appends to a bounded
buffer (or counts a drop) and never blocks. A writer thread takes batches from the buffer,
redacts and encodes them, and appends them to the file: the disk can stall without the
proxy noticing. Redaction (``shadowd.capture.redact``, on decoded bodies) happens in that
thread, before a byte reaches the file. Flush policy: one ``write`` + ``flush`` per batch
(so readers see whole records), ``fsync`` on rotation and on close only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from shadowd import __version__
from shadowd.capture.format import encode_header, encode_record, record_of
from shadowd.capture.redact import Redactor
from shadowd.config import CaptureConfig
from shadowd.exchange import Exchange
from shadowd.redact import redaction_key

_BATCH = 512

log = logging.getLogger("shadowd.capture")


def open_private(path: Path) -> int:
    """Create (or append to) ``path`` readable by its owner only, whatever the umask."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def rotated_name(path: Path, stamp: float) -> Path:
    suffix = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(stamp))
    candidate = path.with_name(f"{path.stem}.{suffix}{path.suffix}")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{suffix}-{n}{path.suffix}")
        n += 1
    return candidate


class CaptureWriter:
    def __init__(
        self,
        config: CaptureConfig,
        *,
        digest: str = "",
        on_written: Callable[[int, int], None] | None = None,
        on_dropped: Callable[[str], None] | None = None,
        on_failed: Callable[[], None] | None = None,
    ) -> None:
        """``on_written(nbytes, records)`` and ``on_dropped(reason)`` are called from the
        writer thread and from ``submit`` respectively: both must be thread-safe (the
        Prometheus client's counters are)."""
        self.config = config
        self._digest = digest
        self._on_written = on_written or (lambda nbytes, records: None)
        self._on_dropped = on_dropped or (lambda reason: None)
        self._on_failed = on_failed or (lambda: None)
        self._retry_at = 0.0  # after a failure, when to try opening the file again
        self._buffer: deque[Exchange] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._opened_at = 0.0
        self._size = 0
        self._file_records = 0
        self.redactor = Redactor(config, redaction_key())
        self.written = 0
        self.dropped = 0
        self.error: str | None = None  # the last failure, while recording is failing
        self.failures = 0

    # -- event loop side -------------------------------------------------------------------
    def submit(self, exchange: Exchange) -> bool:
        if len(self._buffer) >= self.config.buffer_records or self._stopping:
            self.dropped += 1
            self._on_dropped("buffer_full")
            return False
        self._buffer.append(exchange)
        if not self._wake.is_set():
            self._wake.set()
        return True

    async def start(self) -> None:
        await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._run, name="shadowd-capture", daemon=True)
        self._thread.start()

    async def close(self, timeout: float = 10.0) -> bool:
        """Write what is buffered (within ``timeout``), fsync, close. True when all was written."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)
            if self._thread.is_alive():
                return False
        return not self._buffer

    # -- writer thread ---------------------------------------------------------------------
    def _open(self) -> None:
        path = self.config.path
        self._fd = open_private(path)
        self._size = os.fstat(self._fd).st_size
        self._opened_at = time.time()
        self._file_records = 0
        if self._size == 0:
            header = encode_header(f"shadowd {__version__}", self._opened_at, self._digest)
            self._write(header)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(data)

    def status(self) -> dict[str, object]:
        """What operators see (``/api/v1/mirror``, the report): failing or not, and why."""
        return {
            "ok": self.error is None,
            "error": self.error,
            "failures": self.failures,
            "written": self.written,
            "dropped": self.dropped,
        }

    def _run(self) -> None:
        # Never dies: a failure (rotation, a full disk, a deleted folder) is logged, counted
        # and shown; records are dropped and counted meanwhile, and the file is opened again
        # at most once a second until that works.
        buffer = self._buffer
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                if self._fd < 0:
                    self._reopen()
                while buffer:
                    batch = [buffer.popleft() for _ in range(min(_BATCH, len(buffer)))]
                    self._write_batch(batch)
                if self._stopping and not buffer:
                    break
                self._maybe_rotate()
            except Exception as exc:  # the thread must outlive any failure of the disk
                self._fail(exc)
                if self._stopping:
                    break
        self._finish()

    def _fail(self, exc: BaseException) -> None:
        self.failures += 1
        self.error = f"{type(exc).__name__}: {exc}"
        self._on_failed()
        log.error(
            "capture failing; records are dropped (counted) until it recovers: %s",
            self.error,
            exc_info=exc,
        )
        if self._fd >= 0:
            with contextlib.suppress(OSError):  # the file is already in trouble
                os.close(self._fd)
            self._fd = -1
        self._retry_at = time.monotonic() + 1.0

    def _reopen(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        self._open()
        log.info("capture recovered", extra={"path": str(self.config.path)})
        self.error = None

    def _encode(self, batch: list[Exchange]) -> tuple[bytes, int]:
        frames = []
        for exchange in batch:
            try:
                frames.append(encode_record(self.redactor.apply(record_of(exchange))))
            except Exception:  # a record that could not be redacted is never written
                log.exception("capture: exchange %d not recorded: redaction failed", exchange.id)
                self.dropped += 1
                self._on_dropped("redact_error")
        return b"".join(frames), len(frames)

    def _write_batch(self, batch: list[Exchange]) -> None:
        if self._fd < 0:  # failing: counted, not written
            self.dropped += len(batch)
            for _ in batch:
                self._on_dropped("write_error")
            return
        data, records = self._encode(batch)
        if not records:
            return
        try:
            self._write(data)
        except OSError as exc:
            self.dropped += records
            for _ in range(records):
                self._on_dropped("write_error")
            self._fail(exc)
            return
        self.written += records
        self._file_records += records
        self._on_written(len(data), records)
        self._maybe_rotate()

    def _maybe_rotate(self) -> None:
        config = self.config
        too_big = self._size >= config.max_bytes
        too_old = time.time() - self._opened_at >= config.max_age and self._file_records
        if not (too_big or too_old) or self._fd < 0:
            return
        os.fsync(self._fd)
        os.close(self._fd)
        os.replace(config.path, rotated_name(config.path, self._opened_at))
        self._prune()
        self._open()

    def _prune(self) -> None:
        path = self.config.path
        old = sorted(
            (p for p in path.parent.glob(f"{path.stem}.*{path.suffix}") if p != path),
            key=lambda p: p.stat().st_mtime,
        )
        for stale in old[: max(0, len(old) - self.config.keep_files)]:
            stale.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
