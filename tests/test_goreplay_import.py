"""GoReplay files written byte for byte as GoReplay writes them: payload header
``"%c %s %d %d\\n"`` (type, id, start ns, the message's own duration ns) since 1.2, the
3-field form of older writers, gzip, repeated ids, answers written before their requests."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from shadowd.capture.gor import SEPARATOR, read_gor
from shadowd.capture.inspect import inspect_capture, render_inspect
from shadowd.capture.reader import CaptureStats

T0 = 1_795_000_000_000_000_000  # ns
REQUEST = b"GET /delay/1 HTTP/1.1\r\nHost: httpbin\r\nAccept: */*\r\n\r\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def payload(kind: int, ident: str, start_ns: int, duration_ns: int | None = None) -> bytes:
    """One record as GoReplay's PayloadHeader + message + separator."""
    if duration_ns is None:  # v0 writers: "%c %s %d\\n"
        head = f"{kind} {ident} {start_ns}\n"
    else:
        head = f"{kind} {ident} {start_ns} {duration_ns}\n"
    body = REQUEST if kind == 1 else ANSWER
    return head.encode() + body + SEPARATOR


def write(path: Path, records: list[bytes], gz: bool = False) -> Path:
    data = b"".join(records)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_latency_is_the_round_trip_not_the_messages_own_duration(tmp_path, gz):
    ident = "a" * 24
    # a /delay/1 answer starts 1.002 s after its request; its own transfer took 1.3 ms
    path = write(
        tmp_path / ("t.gor.gz" if gz else "t.gor"),
        [payload(1, ident, T0, 52_000), payload(2, ident, T0 + 1_002_000_000, 1_300_000)],
        gz=gz,
    )
    (exchange,) = list(read_gor(path))
    assert exchange.primary.latency == pytest.approx(1.002)


def test_three_field_files_get_the_round_trip_from_the_timestamps(tmp_path):
    ident = "b" * 40  # older files: 40-character ids
    path = write(tmp_path / "t.gor", [payload(1, ident, T0), payload(2, ident, T0 + 25_000_000)])
    (exchange,) = list(read_gor(path))
    assert exchange.primary.latency == pytest.approx(0.025)


def test_an_answer_written_before_its_request_is_paired_not_counted_corrupt(tmp_path):
    ident = "c" * 24
    path = write(
        tmp_path / "t.gor", [payload(2, ident, T0 + 5_000_000, 1), payload(1, ident, T0, 1)]
    )
    stats = CaptureStats()
    (exchange,) = list(read_gor(path, stats))
    assert stats.corrupt == 0
    assert exchange.primary.status == 200
    assert exchange.primary.latency == pytest.approx(0.005)


def test_a_reused_id_pairs_each_answer_with_its_own_request(tmp_path):
    ident = "d" * 24
    records = [
        payload(1, ident, T0, 1),
        payload(2, ident, T0 + 10_000_000, 1),
        payload(1, ident, T0 + 60_000_000_000, 1),  # the same id a minute later
        payload(2, ident, T0 + 60_030_000_000, 1),
    ]
    first, second = list(read_gor(write(tmp_path / "t.gor", records)))
    assert first.request.received_at == pytest.approx(T0 / 1e9)
    assert first.primary.latency == pytest.approx(0.010)
    assert second.request.received_at == pytest.approx(T0 / 1e9 + 60)
    assert second.primary.latency == pytest.approx(0.030)


def test_replayed_responses_are_counted_and_skipped(tmp_path):
    ident = "e" * 24
    records = [payload(1, ident, T0, 1), payload(2, ident, T0 + 1_000_000, 1)]
    records.append(f"3 {ident} {T0 + 2_000_000} 1\n".encode() + ANSWER + SEPARATOR)
    stats = CaptureStats()
    (exchange,) = list(read_gor(write(tmp_path / "t.gor", records), stats))
    assert stats.header["replayed_responses_skipped"] == 1
    assert exchange.primary.status == 200


@pytest.mark.parametrize(
    ("records", "named"),
    [
        ([payload(1, "f" * 40, T0), payload(2, "f" * 40, T0 + 1)], "v0 (3-field"),
        ([payload(1, "f" * 24, T0, 1), payload(2, "f" * 24, T0 + 1, 1)], "v1 (4-field"),
    ],
)
def test_inspect_names_the_format_and_version_it_detected(tmp_path, records, named):
    summary = inspect_capture(write(tmp_path / "t.gor", records))
    text = render_inspect(summary)
    assert "GoReplay file" in text and named in text
    assert "vNone" not in text
