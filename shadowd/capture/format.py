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
from typing import Any

import msgpack

# zlib's own CRC-32 (the same polynomial and values), with SIMD: 0.24 us for an 11 KB record
# against 4.3 us (measured). Every record is checksummed twice, when an ingress worker hands
# it off and when the analysis reads it, and again when a capture is written and read.
from zlib_ng.zlib_ng import crc32

from shadowd.errors import CaptureFormatError
from shadowd.exchange import Answer, Exchange, Request

MAGIC = b"\x89SHADOWD\r\n\x1a\n"  # PNG-style: catches text-mode mangling and truncation
SYNC = b"\xd5\xa7"
FRAME_HEAD = struct.Struct(">2sII")
VERSION = 1
MAX_FRAME = 1 << 30  # a length beyond this is corruption, not a record


def frame(payload: bytes) -> bytes:
    return FRAME_HEAD.pack(SYNC, len(payload), crc32(payload)) + payload


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


def record_of(exchange: Exchange) -> dict[str, Any]:
    """The msgpack-ready map of an exchange (short keys: records are written by the million).
    Header pairs go as they are: msgpack writes a tuple as the same array as a list, so no
    copy of every header list is made (the ingress builds one record per request)."""
    rq = exchange.request
    return {
        "id": exchange.id,
        "ep": exchange.endpoint,
        "rq": {
            "m": rq.method,
            "t": rq.target,
            "h": rq.headers,
            "b": rq.body,
            "at": rq.received_at,
            "c": rq.client,
            "v": rq.http_version,
        },
        "an": [
            {
                "n": a.target,
                "s": a.status,
                "h": a.headers,
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


_bytes = bytes


def exchange_of(record: dict[str, Any]) -> Exchange:
    """Rebuild an exchange; unknown keys are ignored (newer writers may add some)."""
    try:
        return _complete_exchange_of(record)
    except KeyError:  # a record without some optional key: the defaults fill it in
        return _complete_exchange_of(_with_defaults(record))


def _complete_exchange_of(record: dict[str, Any]) -> Exchange:
    """``_exchange_of`` for a record that has every key ``record_of`` writes (the analysis
    plane reads nothing else); a missing one raises KeyError. Indexing instead of ``get``
    with a default, and a conversion only for a value not of the type already (``bytes(x)``
    of bytes is x, ``int(x)`` of an int is x), build the same exchange in less time."""
    rq = record["rq"]
    body = rq["b"]
    at = rq["at"]
    request = Request(
        rq["m"],  # method
        rq["t"],  # target
        # bytes(x) of bytes is x itself, but two calls per header were a third of the
        # time: skipped for them (a pair is a list, or a tuple with use_list=False)
        [
            (n, v) if type(n) is _bytes is type(v) else (_bytes(n), _bytes(v))
            for n, v in rq["h"] or ()
        ],
        body if type(body) is _bytes else _bytes(body),
        at if type(at) is float else float(at),  # received_at
        rq["c"],  # client
        rq["v"],  # http_version
    )
    ident = record["id"]
    answers: dict[str, Answer] = {}
    for an in record["an"]:
        name = an["n"]
        status = an["s"]
        body = an["b"]
        size = an["z"]
        latency = an["l"]
        answers[name] = Answer(
            name,  # target
            status if type(status) is int else int(status),
            [
                (n, v) if type(n) is _bytes is type(v) else (_bytes(n), _bytes(v))
                for n, v in an["h"] or ()
            ],
            body if type(body) is _bytes else _bytes(body),
            size if type(size) is int else int(size),  # body_size
            an["d"],  # body_digest
            latency if type(latency) is float else float(latency),
            an["e"],  # error
        )
    return Exchange(ident if type(ident) is int else int(ident), request, record["ep"], answers)


# What record_of may leave out (an older or hand-made record), as _exchange_of took it.
_REQUEST_DEFAULTS = {"h": None, "b": b"", "at": 0.0, "c": "", "v": "1.1"}
_ANSWER_DEFAULTS = {"s": 0, "h": None, "b": b"", "z": 0, "d": None, "l": 0.0, "e": None}


def _with_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """The record with every optional key filled in (method, target and an answer's name
    stay required: a KeyError)."""
    return {
        "id": record.get("id", 0),
        "ep": record.get("ep", ""),
        "rq": {**_REQUEST_DEFAULTS, **record["rq"]},
        "an": [{**_ANSWER_DEFAULTS, **an} for an in record.get("an", ())],
    }


def migrate_record(version: int, record: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a record of an older format version, one version at a time (like mitmproxy's
    io/compat.py). Version 1 is the first: nothing to do yet; v2 would add ``if version == 1``.
    """
    if version > VERSION:
        raise CaptureFormatError(
            f"capture format version {version} is newer than this shadowd reads ({VERSION})"
        )
    return record
