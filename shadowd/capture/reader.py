"""Reading capture files: every complete record, even from a torn or damaged file.

The file is memory-mapped (nothing is read that is not needed); a file still being written
is read up to its last complete frame.
"""

from __future__ import annotations

import math
import mmap
import os
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
    crc32,
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


def _unpack(payload: bytes | memoryview) -> Any:
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
                if crc32(payload) != crc:
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
                    if crc32(view[position + head : end]) == crc:
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


# msgpack decodes to exactly these types (bin: bytes, str: str, array: list, map: dict), so
# ``type(x) is`` is both exact and cheap: this runs for every record read.
def _finite(value: Any) -> bool:
    kind = type(value)
    # Seconds: no clock reaches 1e15. The comparison is false for NaN and both infinities.
    return (kind is float or kind is int) and -1e15 < value < 1e15


def _pairs_ok(raw: Any) -> bool:
    if raw is None:
        return True
    if type(raw) is not list:
        return False
    for pair in raw:
        if type(pair) is not list or len(pair) != 2:
            return False
        if type(pair[0]) is not bytes or type(pair[1]) is not bytes:
            return False
    return True


def _answer_ok(an: Any) -> bool:
    if type(an) is not dict:
        return False
    get = an.get
    status, size = get("s", 0), get("z", 0)
    digest, error = get("d"), get("e")
    return (
        type(get("n")) is str
        and type(status) is int
        and 0 <= status <= 999
        and _pairs_ok(get("h"))
        and type(get("b", b"")) is bytes
        and type(size) is int
        and 0 <= size < 2**63
        and (digest is None or type(digest) is str)
        and _finite(get("l", 0.0))
        and (error is None or type(error) is str)
    )


def well_formed(record: dict[str, Any]) -> bool:
    """Every field ``exchange_of`` reads has the type the format gives it (docs/capture-format.md):
    a checksum proves the bytes are those written, not that a writer wrote sensible ones."""
    rq = record.get("rq")
    if type(rq) is not dict:
        return False
    get = rq.get
    ident, answers = record.get("id", 0), record.get("an", [])
    if not (
        type(get("m")) is str
        and type(get("t")) is str
        and _pairs_ok(get("h"))
        and type(get("b", b"")) is bytes
        and _finite(get("at", 0.0))
        and type(get("c", "")) is str
        and type(get("v", "1.1")) is str
        and type(ident) is int
        and -(2**63) <= ident < 2**63
        and type(record.get("ep", "")) is str
        and type(answers) is list
    ):
        return False
    return all(_answer_ok(an) for an in answers)


def read_capture(path: str | Path) -> Iterator[Exchange]:
    """Every intact exchange of a capture file."""
    return CaptureReader(path).exchanges()
