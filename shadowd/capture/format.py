"""The capture file format, version 1 (docs/capture-format.md has the byte-level description).

    file   := MAGIC frame(header) frame(record)*
    frame  := SYNC(2) length(4, big-endian) crc32(4, big-endian, of payload) payload
    header := msgpack map {"v", "creator", "started", "config_digest", "meta"}
    record := msgpack map {"id", "ep", "rq": request, "an": [answer, ...]}

Every frame carries its length and checksum, so a reader finds a torn tail (a frame cut
short) and a corrupted frame (a checksum that does not match), skips it, and resynchronises
on the next SYNC whose length and checksum hold.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack

from shadowd.errors import CaptureFormatError
from shadowd.exchange import Answer, Exchange, Request

MAGIC = b"\x89SHADOWD\r\n\x1a\n"  # PNG-style: catches text-mode mangling and truncation
SYNC = b"\xd5\xa7"
FRAME_HEAD = struct.Struct(">2sII")
VERSION = 1
MAX_FRAME = 1 << 30  # a length beyond this is corruption, not a record


def frame(payload: bytes) -> bytes:
    return FRAME_HEAD.pack(SYNC, len(payload), zlib.crc32(payload)) + payload


def encode_header(
    creator: str, started: float, config_digest: str, meta: dict[str, Any] | None = None
) -> bytes:
    return MAGIC + frame(
        msgpack.packb(
            {
                "v": VERSION,
                "creator": creator,
                "started": started,
                "config_digest": config_digest,
                "meta": meta or {},
            },
            use_bin_type=True,
        )
    )


def _headers(headers: list[tuple[bytes, bytes]]) -> list[list[bytes]]:
    return [[name, value] for name, value in headers]


def record_of(exchange: Exchange) -> dict[str, Any]:
    """The msgpack-ready map of an exchange (short keys: records are written by the million)."""
    rq = exchange.request
    return {
        "id": exchange.id,
        "ep": exchange.endpoint,
        "rq": {
            "m": rq.method,
            "t": rq.target,
            "h": _headers(rq.headers),
            "b": rq.body,
            "at": rq.received_at,
            "c": rq.client,
            "v": rq.http_version,
        },
        "an": [
            {
                "n": a.target,
                "s": a.status,
                "h": _headers(a.headers),
                "b": a.body,
                "z": a.body_size,
                "d": a.body_digest,
                "l": a.latency,
                "e": a.error,
            }
            for a in exchange.answers.values()
        ],
    }


def encode_record(record: dict[str, Any]) -> bytes:
    return frame(msgpack.packb(record, use_bin_type=True))


def _pairs(raw: Any) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in raw or ()]


def exchange_of(record: dict[str, Any]) -> Exchange:
    """Rebuild an exchange; unknown keys are ignored (newer writers may add some)."""
    rq = record["rq"]
    request = Request(
        method=rq["m"],
        target=rq["t"],
        headers=_pairs(rq.get("h")),
        body=bytes(rq.get("b", b"")),
        received_at=float(rq.get("at", 0.0)),
        client=rq.get("c", ""),
        http_version=rq.get("v", "1.1"),
    )
    exchange = Exchange(id=int(record.get("id", 0)), request=request, endpoint=record.get("ep", ""))
    for an in record.get("an", ()):
        exchange.answers[an["n"]] = Answer(
            target=an["n"],
            status=int(an.get("s", 0)),
            headers=_pairs(an.get("h")),
            body=bytes(an.get("b", b"")),
            body_size=int(an.get("z", 0)),
            body_digest=an.get("d"),
            latency=float(an.get("l", 0.0)),
            error=an.get("e"),
        )
    return exchange


def migrate_record(version: int, record: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a record of an older format version, one version at a time (like mitmproxy's
    io/compat.py). Version 1 is the first: nothing to do yet; v2 would add ``if version == 1``.
    """
    if version > VERSION:
        raise CaptureFormatError(
            f"capture format version {version} is newer than this shadowd reads ({VERSION})"
        )
    return record
