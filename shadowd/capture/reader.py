"""Reading capture files: every complete record, even from a torn or damaged file.

The file is memory-mapped (nothing is read that is not needed); a file still being written
is read up to its last complete frame.
"""

from __future__ import annotations

import math
import mmap
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from shadowd.capture.format import (
    FRAME_HEAD,
    MAGIC,
    MAX_FRAME,
    SYNC,
    VERSION,
    exchange_of,
    migrate_record,
)
from shadowd.errors import CaptureError, CaptureFormatError
from shadowd.exchange import Exchange


@dataclass
class CaptureStats:
    records: int = 0
    corrupt: int = 0  # frames whose checksum or encoding failed (skipped)
    corrupt_bytes: int = 0
    torn_tail: bool = False  # the file ends inside a frame (a crash, or a write in progress)
    header_damaged: bool = False  # records were read assuming the current format version
    header: dict[str, Any] = field(default_factory=dict)


# Resynchronising checksums candidate frames; a crafted file can make every byte a candidate
# that claims the rest of the file, which costs quadratic time. The checksumming done while
# resynchronising is held to a base allowance plus this many bytes per byte read, so the
# whole read stays linear in the file size. A genuine damaged file spends almost nothing
# (a false SYNC with a plausible length is rare), so its good frames are always verified.
RESYNC_ALLOWANCE = 64 * 1024 * 1024
RESYNC_BYTES_PER_BYTE = 4


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class CaptureReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats = CaptureStats()
        self._budget = RESYNC_ALLOWANCE  # bytes the resync may still checksum

    def records(self) -> Iterator[dict[str, Any]]:
        """Each intact, well-formed record (as a map), in file order; ``self.stats`` counts
        the rest."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc.strerror or exc}") from exc
        with handle:
            try:
                size = os.fstat(handle.fileno()).st_size
                start = handle.read(len(MAGIC) + len(SYNC))
            except OSError as exc:
                raise CaptureError(f"{self.path}: cannot read: {exc.strerror or exc}") from exc
            if not _looks_like_capture(start):
                raise CaptureFormatError(f"{self.path}: not a shadowd capture file")
            if start[: len(MAGIC)] != MAGIC:
                self._corrupt(len(MAGIC))  # a damaged byte or two, and a frame right after it
            if size == len(MAGIC):
                self.stats.torn_tail = True
                return
            try:
                data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:  # not a regular file, or emptied meanwhile
                raise CaptureError(f"{self.path}: cannot map: {exc}") from exc
            with data:
                self._budget = RESYNC_ALLOWANCE
                yield from self._frames(data, min(size, len(data)))

    def exchanges(self) -> Iterator[Exchange]:
        for record in self.records():
            yield exchange_of(record)

    def _frames(self, data: mmap.mmap, size: int) -> Iterator[dict[str, Any]]:
        stats = self.stats
        view = memoryview(data)
        offset = len(MAGIC)
        version = None
        head = FRAME_HEAD.size
        try:
            while offset < size:
                if size - offset < head:
                    stats.torn_tail = True
                    return
                sync, length, crc = FRAME_HEAD.unpack_from(data, offset)
                end = offset + head + length
                if sync != SYNC or length > MAX_FRAME:
                    offset = self._resync(data, view, offset + 1, size)
                    continue
                if end > size:
                    # Either the tail was torn, or the length field itself is damaged and a
                    # good frame follows: only a resync can tell.
                    following = self._resync(data, view, offset + 1, size, count=False)
                    if following >= size:
                        stats.torn_tail = True
                        return
                    self._corrupt(following - offset)
                    offset = following
                    continue
                payload = view[offset + head : end]
                if zlib.crc32(payload) != crc:
                    offset = self._resync(data, view, offset + 1, size)
                    continue
                try:
                    doc = _unpack(payload)
                except (
                    ValueError,
                    TypeError,
                    msgpack.ExtraData,
                    msgpack.FormatError,
                    msgpack.StackError,
                ):
                    self._corrupt(end - offset)
                    offset = end
                    continue
                finally:
                    payload.release()
                offset = end
                self._budget += RESYNC_BYTES_PER_BYTE * (head + length)
                if version is None:
                    if isinstance(doc, dict) and "v" in doc and "rq" not in doc:
                        version = doc["v"]
                        if isinstance(version, bool) or not isinstance(version, int):
                            raise CaptureFormatError(
                                f"{self.path}: the file header has no valid version ({version!r})"
                            )
                        migrate_record(version, {})  # refuses versions newer than ours
                        # Shown by inspect and written as JSON: only what JSON can hold.
                        stats.header = {
                            k: v for k, v in doc.items() if isinstance(k, str) and _plain(v)
                        }
                        continue
                    # The header frame was damaged and skipped: read on as the current version
                    # rather than lose every record behind it.
                    version = VERSION
                    stats.header_damaged = True
                record = migrate_record(version, doc) if isinstance(doc, dict) else None
                if record is None or not well_formed(record):
                    # The checksum holds, so these are the bytes written, but not by a writer
                    # of this format (crafted, or a bug): skipped rather than half-read.
                    self._corrupt(head + length)
                    continue
                stats.records += 1
                yield record
        finally:
            view.release()

    def _resync(
        self, data: mmap.mmap, view: memoryview, start: int, size: int, count: bool = True
    ) -> int:
        """The offset of the next frame whose sync, length and checksum all hold."""
        position = start
        credited = start
        head = FRAME_HEAD.size
        while True:
            position = data.find(SYNC, position)
            if position < 0:
                position = size
                break
            self._budget += RESYNC_BYTES_PER_BYTE * (position - credited)
            credited = position
            if position + head <= size:
                _, length, crc = FRAME_HEAD.unpack_from(data, position)
                end = position + head + length
                # Past the allowance, a candidate is skipped unverified: only a crafted file
                # gets there, and it loses frames that claim more than it has paid for.
                if length <= MAX_FRAME and end <= size and length <= self._budget:
                    self._budget -= length
                    if zlib.crc32(view[position + head : end]) == crc:
                        break
            position += 1
        self._budget += RESYNC_BYTES_PER_BYTE * (position - credited)
        if count:
            self._corrupt(position - start + 1)
        return position

    def _corrupt(self, nbytes: int) -> None:
        self.stats.corrupt += 1
        self.stats.corrupt_bytes += nbytes


def _looks_like_capture(start: bytes) -> bool:
    """The magic, or the magic with at most two damaged bytes and a frame right behind it."""
    if start[: len(MAGIC)] == MAGIC:
        return True
    if len(start) < len(MAGIC) + len(SYNC) or start[len(MAGIC) :] != SYNC:
        return False
    return sum(a != b for a, b in zip(start, MAGIC, strict=False)) <= 2


def _plain(value: Any, depth: int = 0) -> bool:
    """A value JSON can hold as it is: str, finite number, bool, nil, lists, str-keyed maps."""
    if depth > 8:
        return False
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(item, depth + 1) for item in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _finite(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < 1e15  # seconds: beyond any clock; also bounds what int() may hold
    )


def _pairs_ok(raw: Any) -> bool:
    return raw is None or (
        isinstance(raw, list | tuple)
        and all(
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and isinstance(pair[0], bytes)
            and isinstance(pair[1], bytes)
            for pair in raw
        )
    )


def _optional(doc: dict[str, Any], key: str, check: Any) -> bool:
    return key not in doc or check(doc[key])


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def well_formed(record: dict[str, Any]) -> bool:
    """Every field ``exchange_of`` reads has the type the format gives it (docs/capture-format.md):
    a checksum proves the bytes are those written, not that a writer wrote sensible ones."""
    rq = record.get("rq")
    if not isinstance(rq, dict) or not _is_str(rq.get("m")) or not _is_str(rq.get("t")):
        return False
    if not (
        _optional(record, "id", _is_int)
        and _optional(record, "ep", _is_str)
        and _optional(rq, "h", _pairs_ok)
        and _optional(rq, "b", lambda v: isinstance(v, bytes))
        and _optional(rq, "at", _finite)
        and _optional(rq, "c", _is_str)
        and _optional(rq, "v", _is_str)
    ):
        return False
    answers = record.get("an", ())
    if not isinstance(answers, list | tuple):
        return False
    for an in answers:
        if not (
            isinstance(an, dict)
            and _is_str(an.get("n"))
            and _optional(an, "s", lambda v: _is_int(v) and 0 <= v <= 999)
            and _optional(an, "h", _pairs_ok)
            and _optional(an, "b", lambda v: isinstance(v, bytes))
            and _optional(an, "z", lambda v: _is_int(v) and v >= 0)
            and _optional(an, "d", lambda v: v is None or _is_str(v))
            and _optional(an, "l", _finite)
            and _optional(an, "e", lambda v: v is None or _is_str(v))
        ):
            return False
    return True


def read_capture(path: str | Path) -> Iterator[Exchange]:
    """Every intact exchange of a capture file."""
    return CaptureReader(path).exchanges()
