"""Incremental decoding of the capture format's frames, for records arriving on a socket.

The live hand-off carries exactly the bytes a capture file holds after its header: framed
msgpack records (``shadowd.capture.format``). A file reader can mmap; a socket reader gets
the bytes in arbitrary pieces, so it keeps the unfinished tail until the rest arrives.
"""

from __future__ import annotations

from shadowd.capture.format import FRAME_HEAD, SYNC, crc32

_HEAD = FRAME_HEAD.size


class FrameError(ValueError):
    """The stream is not a sequence of frames: the sender is not shadowd, or a bug."""


class FrameDecoder:
    """Bytes in, complete frame payloads out. ``max_frame`` bounds what one frame may claim,
    so a damaged length never makes the reader wait for (or allocate) gigabytes."""

    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        payloads: list[bytes] = []
        offset = 0
        size = len(buffer)
        while size - offset >= _HEAD:
            sync, length, crc = FRAME_HEAD.unpack_from(buffer, offset)
            if sync != SYNC or length > self._max_frame:
                raise FrameError(f"not a frame at stream offset +{offset} (length {length})")
            end = offset + _HEAD + length
            if end > size:
                break
            payload = bytes(buffer[offset + _HEAD : end])
            if crc32(payload) != crc:
                raise FrameError("a frame's checksum does not match")
            payloads.append(payload)
            offset = end
        if offset:
            del buffer[:offset]
        return payloads
