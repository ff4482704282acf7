"""Reading capture files: every complete record, even from a torn or damaged file.

The file is memory-mapped (nothing is read that is not needed); a file still being written
is read up to its last complete frame.
"""

from __future__ import annotations

import mmap
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
    header: dict[str, Any] = field(default_factory=dict)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


class CaptureReader:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.stats = CaptureStats()

    def records(self) -> Iterator[dict[str, Any]]:
        """Each intact record (as a map), in file order; ``self.stats`` counts the rest."""
        try:
            handle = self.path.open("rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot open: {exc.strerror or exc}") from exc
        with handle:
            size = self.path.stat().st_size
            if size < len(MAGIC) or handle.read(len(MAGIC)) != MAGIC:
                raise CaptureFormatError(f"{self.path}: not a shadowd capture file")
            if size == len(MAGIC):
                self.stats.torn_tail = True
                return
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                yield from self._frames(data, size)

    def exchanges(self) -> Iterator[Exchange]:
        for record in self.records():
            yield exchange_of(record)

    def _frames(self, data: mmap.mmap, size: int) -> Iterator[dict[str, Any]]:
        stats = self.stats
        offset = len(MAGIC)
        version = None
        head = FRAME_HEAD.size
        while offset < size:
            if size - offset < head:
                stats.torn_tail = True
                return
            sync, length, crc = FRAME_HEAD.unpack_from(data, offset)
            end = offset + head + length
            if sync != SYNC or length > MAX_FRAME:
                offset = self._resync(data, offset + 1, size)
                continue
            if end > size:
                # Either the tail was torn, or the length field itself is damaged and a
                # good frame follows: only a resync can tell.
                following = self._resync(data, offset + 1, size, count=False)
                if following >= size:
                    stats.torn_tail = True
                    return
                self._corrupt(following - offset)
                offset = following
                continue
            payload = data[offset + head : end]
            if zlib.crc32(payload) != crc:
                offset = self._resync(data, offset + 1, size)
                continue
            try:
                doc = _unpack(payload)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
                self._corrupt(end - offset)
                offset = end
                continue
            offset = end
            if version is None:
                if not isinstance(doc, dict) or "v" not in doc:
                    raise CaptureFormatError(f"{self.path}: the file header is damaged")
                version = int(doc["v"])
                migrate_record(version, {})  # refuses versions newer than ours
                stats.header = doc
                continue
            if not isinstance(doc, dict) or "rq" not in doc:
                self._corrupt(end - offset)
                continue
            stats.records += 1
            yield migrate_record(version, doc)

    def _resync(self, data: mmap.mmap, start: int, size: int, count: bool = True) -> int:
        """The offset of the next frame whose sync, length and checksum all hold."""
        position = start
        head = FRAME_HEAD.size
        while True:
            position = data.find(SYNC, position)
            if position < 0:
                position = size
                break
            if position + head <= size:
                _, length, crc = FRAME_HEAD.unpack_from(data, position)
                end = position + head + length
                if (
                    length <= MAX_FRAME
                    and end <= size
                    and (zlib.crc32(data[position + head : end]) == crc)
                ):
                    break
            position += 1
        if count:
            self._corrupt(position - start + 1)
        return position

    def _corrupt(self, nbytes: int) -> None:
        self.stats.corrupt += 1
        self.stats.corrupt_bytes += nbytes


def read_capture(path: str | Path) -> Iterator[Exchange]:
    """Every intact exchange of a capture file."""
    return CaptureReader(path).exchanges()
