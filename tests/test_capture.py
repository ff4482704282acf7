"""Capture files: round trip, torn tails, corruption, redaction, permissions, rotation, drops."""

from __future__ import annotations

import asyncio
import gzip
import os
import stat
import threading
from pathlib import Path

import pytest

from shadowd.capture.format import encode_header, encode_record, record_of
from shadowd.capture.gor import SEPARATOR, read_gor
from shadowd.capture.inspect import inspect_capture, iter_records_json
from shadowd.capture.reader import CaptureReader, read_capture
from shadowd.capture.writer import CaptureWriter
from shadowd.config import CaptureConfig
from shadowd.errors import CaptureFormatError
from shadowd.exchange import Answer, Exchange, Request


def exchange(i: int, **request_overrides) -> Exchange:
    request = Request(
        method="POST",
        target=f"/orders/{i}?lang=fr",
        headers=[(b"Host", b"shop"), (b"X-Tenant", b"acme")],
        body=bytes([i % 256]) * 40 + b"\x00\xff",
        received_at=1_700_000_000.0 + i,
        client="10.1.2.3",
        http_version="1.1",
    )
    for key, value in request_overrides.items():
        setattr(request, key, value)
    ex = Exchange(id=i, request=request, endpoint="POST /orders/{id}")
    ex.answers["primary"] = Answer(
        "primary",
        200,
        [(b"Content-Type", b"application/json")],
        b'{"ok": true, "n": "\xc3\xa9"}',
        25,
        None,
        0.0123,
        None,
    )
    ex.answers["candidate"] = Answer("candidate", 0, [], b"", 9_000_000, "abc123", 1.5, "timeout")
    return ex


def write_file(path: Path, exchanges: list[Exchange]) -> list[int]:
    """A capture file by hand; returns the offset where each record's frame starts."""
    data = bytearray(encode_header("test", 1.0, "digest"))
    offsets = []
    for ex in exchanges:
        offsets.append(len(data))
        data += encode_record(record_of(ex))
    path.write_bytes(bytes(data))
    return offsets


def test_every_field_round_trips(tmp_path):
    path = tmp_path / "c.shadow"
    original = [exchange(i) for i in range(3)]
    write_file(path, original)
    assert list(read_capture(path)) == original


def test_torn_tail_at_every_offset_keeps_every_complete_record(tmp_path):
    path = tmp_path / "c.shadow"
    offsets = write_file(path, [exchange(i) for i in range(4)])
    whole = path.read_bytes()
    last = offsets[-1]
    for cut in range(last, len(whole)):
        path.write_bytes(whole[:cut])
        reader = CaptureReader(path)
        ids = [ex.id for ex in reader.exchanges()]
        assert ids == [0, 1, 2], cut
        assert reader.stats.torn_tail == (cut > last), cut
        assert reader.stats.corrupt == 0, cut


def test_flipped_byte_in_a_middle_record_is_detected_and_skipped(tmp_path):
    path = tmp_path / "c.shadow"
    offsets = write_file(path, [exchange(i) for i in range(5)])
    data = bytearray(path.read_bytes())
    data[offsets[2] + 30] ^= 0x40
    path.write_bytes(bytes(data))
    reader = CaptureReader(path)
    assert [ex.id for ex in reader.exchanges()] == [0, 1, 3, 4]
    assert reader.stats.corrupt == 1


def test_damaged_length_field_is_skipped_too(tmp_path):
    path = tmp_path / "c.shadow"
    offsets = write_file(path, [exchange(i) for i in range(4)])
    data = bytearray(path.read_bytes())
    data[offsets[1] + 3] ^= 0x7F  # a length byte: the frame claims far more than it has
    path.write_bytes(bytes(data))
    reader = CaptureReader(path)
    assert [ex.id for ex in reader.exchanges()] == [0, 2, 3]
    assert reader.stats.corrupt == 1


def test_not_a_capture_file_is_refused_clearly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CaptureFormatError, match="not a shadowd capture file"):
        list(read_capture(path))


def test_future_version_is_refused_with_the_supported_one(tmp_path):
    import msgpack

    from shadowd.capture.format import MAGIC, frame

    path = tmp_path / "future.shadow"
    path.write_bytes(MAGIC + frame(msgpack.packb({"v": 7, "creator": "x"})))
    with pytest.raises(CaptureFormatError, match="version 7 is newer than this shadowd reads"):
        list(read_capture(path))


def capture_config(tmp_path: Path, **overrides) -> CaptureConfig:
    return CaptureConfig(path=tmp_path / "caps" / "live.shadow", **overrides)


async def test_writer_creates_private_files_and_redacts_secrets(tmp_path):
    config = capture_config(
        tmp_path,
        redact_body_fields=("$.password", "$.cards[*].number"),
        redact_query_params=frozenset({"session"}),
    )
    writer = CaptureWriter(config)
    await writer.start()
    secret = exchange(
        1,
        headers=[
            (b"Authorization", b"Bearer TOPSECRET-1"),
            (b"Cookie", b"sid=TOPSECRET-2"),
            (b"X-Api-Key", b"TOPSECRET-3"),
        ],
        target="/login?session=TOPSECRET-4&token=TOPSECRET-5&lang=fr",
        body=b'{"user": "ada", "password": "TOPSECRET-6", "cards": [{"number": "TOPSECRET-7"}]}',
    )
    secret.answers["primary"].headers = [(b"Set-Cookie", b"sid=TOPSECRET-8")]
    assert writer.submit(secret)
    assert await writer.close()
    data = config.path.read_bytes()
    assert b"TOPSECRET" not in data
    assert stat.S_IMODE(os.stat(config.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(config.path.parent).st_mode) == 0o700
    (back,) = list(read_capture(config.path))
    assert (
        back.request.body
        == b'{"user":"ada","password":"[redacted]","cards":[{"number":"[redacted]"}]}'
    )
    assert "lang=fr" in back.request.target
    assert back.request.headers[0] == (b"Authorization", b"[redacted]")
    assert secret.request.headers[0] == (b"Authorization", b"Bearer TOPSECRET-1")  # live: intact


async def test_a_file_being_written_is_readable(tmp_path):
    config = capture_config(tmp_path)
    writer = CaptureWriter(config)
    await writer.start()
    written = threading.Event()
    writer._on_written = lambda nbytes, records: written.set()
    for i in range(10):
        writer.submit(exchange(i))
    assert await asyncio.to_thread(written.wait, 5)
    assert len(list(read_capture(config.path))) >= 1  # while the writer is still open
    await writer.close()
    assert [ex.id for ex in read_capture(config.path)] == list(range(10))


async def test_submit_never_blocks_and_counts_drops_when_the_disk_stalls(tmp_path):
    config = capture_config(tmp_path, buffer_records=5)
    writer = CaptureWriter(config)
    drops: list[str] = []
    writer._on_dropped = drops.append
    stalled, release = threading.Event(), threading.Event()
    real_write = writer._write_batch

    def stalling(batch):
        stalled.set()
        release.wait(10)
        real_write(batch)

    writer._write_batch = stalling
    await writer.start()
    writer.submit(exchange(0))
    assert await asyncio.to_thread(stalled.wait, 5)  # the thread is stuck on the "disk"
    accepted = [writer.submit(exchange(i)) for i in range(1, 11)]
    assert accepted == [True] * 5 + [False] * 5
    assert drops == ["buffer_full"] * 5
    release.set()
    assert await writer.close()
    assert len(list(read_capture(config.path))) == 6


async def test_rotation_by_size_keeps_a_bounded_number_of_files(tmp_path):
    config = capture_config(tmp_path, max_bytes=2000, keep_files=2)
    writer = CaptureWriter(config)
    await writer.start()
    for i in range(40):
        writer.submit(exchange(i))
    assert await writer.close()
    files = sorted(config.path.parent.iterdir())
    assert 2 <= len(files) <= 3  # the live file and at most keep_files rotated ones
    assert all(stat.S_IMODE(os.stat(f).st_mode) == 0o600 for f in files)
    for f in files:
        assert CaptureReader(f).stats.corrupt == 0
        list(read_capture(f))


def gor_file(path: Path, gz: bool = False) -> None:
    records = [
        b"1 aaaaaaaaaaaaaaaaaaaaaaaa 1700000000000000000 0\n"
        b"GET /users/7?x=1 HTTP/1.1\r\nHost: shop\r\nAccept: */*\r\n\r\n",
        b"2 aaaaaaaaaaaaaaaaaaaaaaaa 1700000000002000000 2000000\n"
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'\r\n5\r\n{"a":\r\n2\r\n1}\r\n0\r\n\r\n',
        b"3 aaaaaaaaaaaaaaaaaaaaaaaa 1700000000003000000 1000000\n"
        b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        b"1 bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 1700000001000000000\n"  # old 3-field form
        b'POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 7\r\n\r\n{"q":1}',
    ]
    data = b"".join(r + SEPARATOR for r in records)
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.mark.parametrize("name", ["traffic.gor", "traffic.gor.gz"])
def test_goreplay_file_imports(tmp_path, name):
    path = tmp_path / name
    gor_file(path, gz=name.endswith(".gz"))
    first, second = list(read_gor(path))
    assert (first.request.method, first.request.target) == ("GET", "/users/7?x=1")
    assert first.request.received_at == 1_700_000_000.0
    assert first.endpoint == "GET /users/{id}"
    assert first.primary.status == 200
    assert first.primary.body == b'{"a":1}'
    assert first.primary.latency == pytest.approx(0.002)
    assert (second.request.method, second.request.body) == ("POST", b'{"q":1}')
    assert second.primary is None


def test_inspect_summarises_a_known_file(tmp_path):
    path = tmp_path / "c.shadow"
    write_file(path, [exchange(i) for i in range(5)])
    summary = inspect_capture(path)
    assert summary["records"] == 5
    assert summary["time_span"]["seconds"] == 4.0
    assert summary["endpoints"] == {"POST /orders/{id}": 5}
    assert summary["statuses"]["candidate"] == {"timeout": 5}
    assert summary["request_body_bytes"]["max"] == 42
    lines = list(iter_records_json(path))
    assert len(lines) == 5
    assert '"base64"' in lines[0]  # binary request bodies stay lossless


def test_a_record_decodes_to_the_exchange_it_was_made_of_field_by_field():
    # exchange_of builds Request and Answer positionally (it runs for every exchange the
    # analysis reads): every field must come back in its own place, of its own type.
    import msgpack

    from shadowd.capture.format import exchange_of

    original = exchange(7)
    original.request.http_version = "1.0"
    payload = msgpack.packb(record_of(original), use_bin_type=True)
    decoded = exchange_of(msgpack.unpackb(payload, raw=False, strict_map_key=False))
    assert decoded == original
    primary = decoded.answers["primary"]
    assert type(primary.headers[0]) is tuple and type(primary.headers[0][0]) is bytes
    # a header that is not bytes is refused, as before the fast path (counted undecodable)
    record = record_of(original)
    record["rq"]["h"] = [["Host", "shop"]]
    with pytest.raises(TypeError):
        exchange_of(record)


def test_header_pairs_are_written_as_arrays_whether_tuples_or_lists():
    # record_of hands msgpack the exchange's (name, value) tuples without copying them into
    # lists: the bytes must be those of the lists files were always written with.
    import msgpack

    original = exchange(3)
    record = record_of(original)
    as_lists = {
        **record,
        "rq": {**record["rq"], "h": [list(p) for p in original.request.headers]},
        "an": [{**an, "h": [list(p) for p in an["h"]]} for an in record["an"]],
    }
    assert any(type(p) is tuple for p in record["rq"]["h"])
    assert msgpack.packb(record, use_bin_type=True) == msgpack.packb(as_lists, use_bin_type=True)


def test_frames_carry_zlibs_crc32_so_files_written_before_still_read():
    import random
    import zlib

    from shadowd.capture.format import crc32

    rng = random.Random(9)
    for size in (0, 1, 15, 64, 1000, 11_000, 70_001):
        data = rng.randbytes(size)
        assert crc32(data) == zlib.crc32(data)
        assert crc32(memoryview(data)[1:]) == zlib.crc32(data[1:])
