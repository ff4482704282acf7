"""The capture writer outlives a failing disk: it logs, counts, shows the failure, drops and
counts records meanwhile, and records again once the file can be written."""

from __future__ import annotations

import os

from test_capture import exchange

from shadowd.capture import writer as writer_module
from shadowd.capture.reader import CaptureReader
from shadowd.capture.writer import CaptureWriter
from shadowd.config import CaptureConfig


async def test_a_failed_rotation_is_logged_counted_shown_and_recovered(
    tmp_path, monkeypatch, caplog
):
    failures: list[int] = []
    dropped: list[str] = []
    config = CaptureConfig(path=tmp_path / "live.shadow", max_bytes=3000, keep_files=3)
    writer = CaptureWriter(config, on_failed=lambda: failures.append(1), on_dropped=dropped.append)
    real_replace = os.replace
    calls = {"n": 0}

    def failing_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", failing_replace)
    await writer.start()
    for i in range(30):
        writer.submit(exchange(i))
    assert await writer.close(timeout=10.0)
    assert failures == [1]
    assert "No space left on device" in caplog.text
    assert writer.failures == 1
    # after the failure the file was opened again and recording went on
    assert writer.written > 0
    assert writer.written + writer.dropped == 30
    assert dropped.count("write_error") == writer.dropped
    files = sorted(tmp_path.iterdir())
    readable = sum(len(list(CaptureReader(f).records())) for f in files)
    assert readable == writer.written


async def test_status_says_when_recording_fails(tmp_path):
    config = CaptureConfig(path=tmp_path / "live.shadow")
    writer = CaptureWriter(config)
    await writer.start()
    assert writer.status()["ok"] is True
    writer._fail(OSError(5, "Input/output error"))  # what the thread does on a failure
    status = writer.status()
    assert status["ok"] is False and "Input/output error" in status["error"]
    await writer.close()
