"""Damaged, truncated and crafted captures: the readers raise nothing but ``CaptureError``
(the documented clear error) and lose no more than the records that were damaged.

Seeded mutations (``random.Random(seed)``), so a failure names the seed that reproduces it.
"""

from __future__ import annotations

import gzip
import random
import time
import zlib
from pathlib import Path

import msgpack
import pytest

from shadowd.capture.format import (
    FRAME_HEAD,
    MAGIC,
    SYNC,
    encode_header,
    encode_record,
    frame,
    record_of,
)
from shadowd.capture.gor import SEPARATOR, read_gor
from shadowd.capture.inspect import inspect_capture, iter_records_json
from shadowd.capture.reader import CaptureReader, CaptureStats
from shadowd.cli import main
from shadowd.errors import CaptureError, CaptureFormatError
from shadowd.exchange import Answer, Exchange, Request
from shadowd.replay import Replay, ReplayOptions


def exchange(i: int, rng: random.Random | None = None, **request) -> Exchange:
    # Binary bodies with SYNC bytes in them: false frame starts for the resync to reject.
    body = rng.randbytes(rng.randrange(0, 300)) + SYNC if rng else b""
    ex = Exchange(
        id=i,
        request=Request(
            method=request.get("method", "POST"),
            target=request.get("target", f"/items/{i}?q={i}"),
            headers=request.get("headers", [(b"Host", b"shop"), (b"X-N", str(i).encode())]),
            body=body,
            received_at=1_700_000_000.0 + i,
            client="10.0.0.1:5000",
        ),
        endpoint="POST /items/{id}",
    )
    ex.answers["primary"] = Answer(
        target="primary", status=200, headers=[(b"Content-Type", b"x")], body=body[::-1]
    )
    return ex


def capture_bytes(exchanges: list[Exchange]) -> tuple[bytes, list[tuple[int, int]]]:
    """The file's bytes and each record frame's (start, end)."""
    data = bytearray(encode_header("test", 0.0, "digest"))
    spans = []
    for ex in exchanges:
        start = len(data)
        data += encode_record(record_of(ex))
        spans.append((start, len(data)))
    return bytes(data), spans


def read_shadow(path: Path, data: bytes) -> tuple[list[Exchange], CaptureStats]:
    path.write_bytes(data)
    reader = CaptureReader(path)
    return list(reader.exchanges()), reader.stats


def record_at(spans: list[tuple[int, int]], position: int) -> int | None:
    return next((k for k, (a, b) in enumerate(spans) if a <= position < b), None)


ORIGINALS = [exchange(i, random.Random(i)) for i in range(40)]
DATA, SPANS = capture_bytes(ORIGINALS)
HEADER_END = SPANS[0][0]


# -- .shadow: one damage at a time, with the exact loss it may cause ---------------------------
@pytest.mark.parametrize("seed", range(6))
def test_one_flipped_byte_loses_at_most_its_own_record(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(60):
        position = rng.randrange(len(DATA))
        damaged = bytearray(DATA)
        damaged[position] ^= rng.randrange(1, 256)
        try:
            got, stats = read_shadow(tmp_path / "c.shadow", bytes(damaged))
        except CaptureFormatError:
            assert position < len(MAGIC), (seed, position)  # only a mangled magic is refused
            continue
        k = record_at(SPANS, position)
        expected = [ex for i, ex in enumerate(ORIGINALS) if i != k]
        assert got == expected, (seed, position, k)
        assert stats.corrupt >= 1 or position < HEADER_END, (seed, position)


def test_a_damaged_header_frame_keeps_all_16100_records(tmp_path):
    exchanges = [exchange(i) for i in range(16_100)]
    data, spans = capture_bytes(exchanges)
    rng = random.Random(7)
    # The SYNC, the length, the checksum and the payload of the header frame.
    for position in (
        len(MAGIC),
        len(MAGIC) + 3,
        len(MAGIC) + 8,
        rng.randrange(len(MAGIC) + 10, spans[0][0]),
    ):
        damaged = bytearray(data)
        damaged[position] ^= 0x20
        got, stats = read_shadow(tmp_path / "big.shadow", bytes(damaged))
        assert len(got) == 16_100 and got[-1] == exchanges[-1], position
        assert stats.header_damaged and stats.corrupt == 1, position


def test_a_near_miss_magic_is_read_and_counted(tmp_path):
    damaged = bytearray(DATA)
    damaged[3] ^= 0x01
    got, stats = read_shadow(tmp_path / "c.shadow", bytes(damaged))
    assert got == ORIGINALS and stats.corrupt == 1


@pytest.mark.parametrize("seed", range(3))
def test_truncation_keeps_every_complete_record(tmp_path, seed):
    rng = random.Random(seed)
    for cut in [rng.randrange(len(MAGIC), len(DATA)) for _ in range(40)]:
        got, stats = read_shadow(tmp_path / "c.shadow", DATA[:cut])
        complete = [ex for ex, (_, end) in zip(ORIGINALS, SPANS, strict=True) if end <= cut]
        assert got == complete, (seed, cut)
        assert stats.corrupt == 0, (seed, cut)


@pytest.mark.parametrize("seed", range(3))
def test_inserted_garbage_loses_at_most_the_record_it_lands_in(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(40):
        position = rng.randrange(HEADER_END, len(DATA))
        garbage = rng.randbytes(rng.randrange(1, 200))
        if rng.random() < 0.5:  # garbage that looks like frame starts
            garbage += FRAME_HEAD.pack(SYNC, rng.randrange(0, 5000), rng.getrandbits(32))
        got, stats = read_shadow(tmp_path / "c.shadow", DATA[:position] + garbage + DATA[position:])
        k = record_at(SPANS, position)
        if k is not None and SPANS[k][0] == position:
            k = None  # inserted between two records: nothing is damaged
        assert got == [ex for i, ex in enumerate(ORIGINALS) if i != k], (seed, position)
        assert stats.corrupt >= 1


@pytest.mark.parametrize("seed", range(8))
def test_random_mixed_damage_never_raises_or_invents_records(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(25):
        data = bytearray(DATA)
        for _ in range(rng.randrange(1, 12)):
            kind = rng.randrange(4)
            position = rng.randrange(len(data) + 1)
            if kind == 0 and position < len(data):
                data[position] ^= rng.randrange(1, 256)
            elif kind == 1:
                data[position:position] = rng.randbytes(rng.randrange(1, 64))
            elif kind == 2:
                del data[position : position + rng.randrange(1, 64)]
            else:
                data[position:position] = SYNC + rng.randbytes(8)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)) :]
        try:
            got, _ = read_shadow(tmp_path / "c.shadow", bytes(data))
            summary = inspect_capture(tmp_path / "c.shadow")
            lines = list(iter_records_json(tmp_path / "c.shadow"))
        except CaptureError:
            continue
        positions = [ORIGINALS.index(ex) for ex in got]  # raises if a record was invented
        assert positions == sorted(positions), seed
        assert summary["records"] == len(got) == len(lines)


def test_resync_through_a_crafted_16_mib_file_is_linear(tmp_path):
    """Every ten bytes a frame that claims the rest of the file: checksumming each claim would
    read the file a million times."""
    size = 16 * 1024 * 1024
    header = encode_header("test", 0.0, "digest")
    heads = bytearray()
    position = len(header)
    while position + 10 <= size:
        heads += FRAME_HEAD.pack(SYNC, size - position - 10, 0)
        position += 10
    good = [exchange(i) for i in range(3)]
    filler = b"\0" * (size - position) + b"\0" * 64  # room after the last crafted claim
    data = header + bytes(heads) + filler + capture_bytes(good)[0][len(header) :]
    started = time.perf_counter()
    got, stats = read_shadow(tmp_path / "crafted.shadow", data)
    assert time.perf_counter() - started < 5.0
    assert got == good
    assert stats.corrupt >= 1


# -- records whose checksum holds but whose fields are nonsense --------------------------------
def good_record(i: int) -> dict:
    return record_of(exchange(i))


def crafted(change) -> dict:
    record = good_record(99)
    change(record)
    return record


BAD_RECORDS = [
    crafted(lambda r: r.update(rq=5)),
    crafted(lambda r: r.pop("rq")),
    crafted(lambda r: r["rq"].update(m=7)),
    crafted(lambda r: r["rq"].update(t=b"/bytes")),
    crafted(lambda r: r["rq"].update(h=[[b"only-a-name"]])),
    crafted(lambda r: r["rq"].update(h=[[b"a", b"b", b"c"]])),
    crafted(lambda r: r["rq"].update(h=[[10**12, b"v"]])),  # bytes(10**12) would eat the memory
    crafted(lambda r: r["rq"].update(h="not a list")),
    crafted(lambda r: r["rq"].update(b=10**12)),
    crafted(lambda r: r["rq"].update(at="yesterday")),
    crafted(lambda r: r["rq"].update(at=float("nan"))),
    crafted(lambda r: r.update(id="seven")),
    crafted(lambda r: r.update(an={"n": "primary"})),
    crafted(lambda r: r["an"][0].update(s="200")),
    crafted(lambda r: r["an"][0].update(s=2**64 - 1)),
    crafted(lambda r: r["an"][0].pop("n")),
    crafted(lambda r: r["an"][0].update(l=[1])),
    crafted(lambda r: r["an"].append(3)),
]


def test_records_with_wrong_types_are_skipped_and_counted(tmp_path, capsys):
    frames = [encode_record(good_record(0))]
    for record in BAD_RECORDS:
        frames.append(frame(msgpack.packb(record, use_bin_type=True)))
    frames.append(frame(msgpack.packb([1, 2, 3])))  # not even a map
    frames.append(frame(msgpack.packb({(1, 2): 3}, use_bin_type=True, strict_types=False)))
    frames.append(encode_record(good_record(1)))
    path = tmp_path / "crafted.shadow"
    path.write_bytes(encode_header("test", 0.0, "d") + b"".join(frames))

    reader = CaptureReader(path)
    assert [ex.id for ex in reader.exchanges()] == [0, 1]
    assert reader.stats.corrupt == len(BAD_RECORDS) + 2
    summary = inspect_capture(path)
    assert summary["records"] == 2 and summary["damaged"]["corrupt"] == len(BAD_RECORDS) + 2
    assert len(list(iter_records_json(path))) == 2
    assert main(["inspect", str(path)]) == 0
    # Replay reads them the same way: no live primary and nothing answers, so nothing is sent.
    replay = ["replay", str(path), "--target", "candidate=http://127.0.0.1:9", "--rate", "1000"]
    # --analysis-nice 0: in this process, a lowered priority would outlive the test
    code = main([*replay, "--analysis-nice", "0"])
    out = capsys.readouterr()
    assert code == 0 and "Traceback" not in out.err
    assert f"{len(BAD_RECORDS) + 2} corrupt records skipped" in out.out


def test_a_header_with_odd_values_still_inspects_as_json(tmp_path, capsys):
    header = {"v": 1, "creator": b"bytes", 7: "int key", "meta": {"x": float("nan")}, "ok": "yes"}
    path = tmp_path / "odd.shadow"
    path.write_bytes(MAGIC + frame(msgpack.packb(header, use_bin_type=True)) + DATA[HEADER_END:])
    assert main(["inspect", "--json", str(path)]) == 0
    assert '"ok": "yes"' in capsys.readouterr().out


def test_replay_skips_recorded_requests_that_would_split_on_the_wire(tmp_path):
    exchanges = [
        exchange(0),
        exchange(1, target="/a\r\nX-Injected: 1"),
        exchange(2, target="/a b"),
        exchange(3, headers=[(b"X-A", b"v\r\nX-Injected: 1")]),
        exchange(4, headers=[(b"X A", b"v")]),
        exchange(5, method="GE T"),
        exchange(6, target="http://elsewhere/"),
        exchange(7, headers=[(b"X-A", b"tab\tand latin-1 \xe9 are fine")]),
    ]
    path = tmp_path / "c.shadow"
    path.write_bytes(capture_bytes(exchanges)[0])
    runner = Replay(path, ReplayOptions(targets={"candidate": "http://127.0.0.1:9"}))
    assert [ex.id for ex in runner._selected()] == [0, 7]
    assert runner.skipped_malformed == {"target": 3, "header": 2, "method": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--header", "candidate:X-A=env:SHADOWD_TEST_VALUE"], "control characters"),
        (["--header", "candidate:Content-Length=5"], "framing"),
        (["--header", "candidate:X A=1"], "not a valid header name"),
        (["--speed", "0"], "--speed must be a number above 0"),
        (["--rate", "nan"], "--rate must be a number above 0"),
        (["--path", "("], "not a regular expression"),
        (["--loop", "0"], "--loop must be at least 1"),
    ],
)
def test_replay_refuses_bad_options_with_a_message(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.setenv("SHADOWD_TEST_VALUE", "a\r\nX-Injected: 1")
    path = tmp_path / "c.shadow"
    path.write_bytes(DATA)
    assert main(["replay", str(path), "--target", "candidate=http://127.0.0.1:9", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999", "http://", "http://h/?q=1"])
def test_replay_refuses_bad_target_urls(tmp_path, capsys, url):
    assert main(["replay", str(tmp_path / "x.shadow"), "--target", f"candidate={url}"]) == 2
    assert "--target" in capsys.readouterr().err


# -- GoReplay -------------------------------------------------------------------------------------
def gor_records(n: int, rng: random.Random) -> list[tuple[bytes, tuple[str, str, bytes]]]:
    """(record bytes with separator, the request it holds); responses follow their requests."""
    out = []
    for i in range(n):
        ident = b"%024x" % i
        body = rng.choice([b"", b'{"q":%d}' % i, "é🐵".encode()])
        request = (
            b"1 %s %d 0\nPOST /o/%d HTTP/1.1\r\nHost: shop\r\nContent-Length: %d\r\n\r\n%s"
            % (ident, 1_700_000_000_000_000_000 + i, i, len(body), body)
        )
        out.append((request + SEPARATOR, ("POST", f"/o/{i}", body)))
        response = b"2 %s %d 1000\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" % (
            ident,
            1_700_000_000_000_000_000 + i,
        )
        out.append((response + SEPARATOR, None))
    return out


GOR = gor_records(30, random.Random(1))
GOR_DATA = b"".join(record for record, _ in GOR)
GOR_REQUESTS = [request for _, request in GOR if request is not None]


def read_gor_file(path: Path, data: bytes) -> tuple[list[tuple[str, str, bytes]], CaptureStats]:
    path.write_bytes(data)
    stats = CaptureStats()
    got = [(ex.request.method, ex.request.target, ex.request.body) for ex in read_gor(path, stats)]
    return got, stats


@pytest.mark.parametrize("seed", range(4))
def test_gor_one_flipped_byte_loses_at_most_one_request(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(60):
        position = rng.randrange(len(GOR_DATA))
        damaged = bytearray(GOR_DATA)
        damaged[position] ^= rng.randrange(1, 256)
        got, _ = read_gor_file(tmp_path / "t.gor", bytes(damaged))
        missing = [r for r in GOR_REQUESTS if r not in got]
        assert len(missing) <= 1, (seed, position, missing)


@pytest.mark.parametrize("seed", range(2))
def test_gor_truncation_keeps_every_complete_record(tmp_path, seed):
    rng = random.Random(seed)
    ends = []  # (where the record's separator ends, its request or None)
    total = 0
    for record, request in GOR:
        total += len(record)
        ends.append((total, request))
    for cut in [rng.randrange(len(GOR_DATA)) for _ in range(30)]:
        got, stats = read_gor_file(tmp_path / "t.gor", GOR_DATA[:cut])
        assert got == [r for end, r in ends if end <= cut and r is not None], (seed, cut)
        last_complete = max([0] + [end for end, _ in ends if end <= cut])
        assert stats.torn_tail == bool(GOR_DATA[last_complete:cut].strip()), (seed, cut)


def test_truncated_gor_gz_keeps_what_was_complete_before_the_cut(tmp_path):
    packed = gzip.compress(GOR_DATA)
    for cut in range(10, len(packed), max(1, len(packed) // 40)):
        readable = zlib.decompressobj(wbits=31).decompress(packed[:cut])
        got, stats = read_gor_file(tmp_path / "t.gor.gz", packed[:cut])
        assert got == [
            r for r in GOR_REQUESTS if r in read_gor_file(tmp_path / "p.gor", readable)[0]
        ]
        assert stats.torn_tail


def test_gor_gz_that_is_not_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "t.gor.gz"
    path.write_bytes(GOR_DATA)
    with pytest.raises(CaptureFormatError, match="not a gzip file"):
        list(read_gor(path))
    assert main(["inspect", str(path)]) == 1


@pytest.mark.parametrize("seed", range(4))
def test_gor_random_damage_never_raises_anything_but_capture_errors(tmp_path, seed):
    rng = random.Random(seed)
    for name, raw in (("t.gor", GOR_DATA), ("t.gor.gz", gzip.compress(GOR_DATA))):
        for _ in range(20):
            data = bytearray(raw)
            for _ in range(rng.randrange(1, 8)):
                position = rng.randrange(len(data))
                if rng.random() < 0.5:
                    data[position] ^= rng.randrange(1, 256)
                else:
                    data[position:position] = rng.randbytes(rng.randrange(1, 40))
            if rng.random() < 0.3:
                del data[rng.randrange(len(data)) :]
            path = tmp_path / name
            path.write_bytes(bytes(data))
            try:
                summary = inspect_capture(path)
                lines = list(iter_records_json(path))
            except CaptureError:
                continue
            assert summary["records"] == len(lines)
