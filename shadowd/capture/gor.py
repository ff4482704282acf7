"""Importing GoReplay captures (``.gor``, ``.gor.gz``) so users can bring what they have.

GoReplay writes ``"<type> <id> <timestamp> [<latency>]\\n"`` + a raw HTTP message +
``"\\n🐵🙈🙉\\n"`` per record. Type 1 is a request, 2 the original response, 3 a replayed
response (which target answered is not recorded, so type 3 is counted and skipped). The id
pairs a request with its response; the timestamp is in Unix nanoseconds. What maps: method,
target, headers, body, arrival time, and the original response as the primary's answer
(status, headers, body, and the latency when the header has one). What does not: the client
address, the secondary and candidate answers, and anything GoReplay did not record.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from shadowd.capture.reader import CaptureStats
from shadowd.endpoints import auto_template
from shadowd.errors import CaptureError, CaptureFormatError
from shadowd.exchange import PRIMARY, Answer, Exchange, Headers, Request

SEPARATOR = "\n🐵🙈🙉\n".encode()
_STATUS = re.compile(rb"^[1-9][0-9]{2}$")
_PIECE = 64 * 1024
_MONKEYS = tuple((m.encode(), 1 + 4 * i) for i, m in enumerate("🐵🙈🙉"))


def _split_message(raw: bytes) -> tuple[bytes, Headers, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    if not _:
        head, _, body = raw.partition(b"\n\n")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    headers: Headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers.append((name.strip(), value.strip()))
    chunked = any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)
    return lines[0], headers, _dechunk(body) if chunked else body


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    position = 0
    while position < len(body):
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            break
        try:
            size = int(body[position:line_end].split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        start = line_end + 2
        out += body[start : start + size]
        position = start + size + 2
    return bytes(out)


def _separators(data: bytes) -> list[int]:
    """Where each record's separator starts: exact ones, and ones with a single damaged byte.
    GoReplay files carry no lengths or checksums, so a damaged separator would otherwise
    merge two records into one and lose both."""
    exact = []
    position = data.find(SEPARATOR)
    while position >= 0:
        exact.append(position)
        position = data.find(SEPARATOR, position + len(SEPARATOR))
    found = []
    start = 0
    for end in [*exact, len(data)]:
        found += _damaged_separators(data, start, end)
        if end < len(data):
            found.append(end)
        start = end + len(SEPARATOR)
    return found


def _damaged_separators(data: bytes, start: int, end: int) -> list[int]:
    # One damaged byte leaves at least two of the three 4-byte monkeys intact, so a search
    # for each monkey, then a byte-by-byte comparison of the window, finds every such one.
    hits: set[int] = set()
    for monkey, offset in _MONKEYS:
        position = data.find(monkey, start, end)
        while position >= 0:
            window = position - offset
            if start <= window and window + len(SEPARATOR) <= end:
                piece = data[window : window + len(SEPARATOR)]
                if sum(a != b for a, b in zip(piece, SEPARATOR, strict=True)) == 1:
                    hits.add(window)
            position = data.find(monkey, position + 1, end)
    out: list[int] = []
    for window in sorted(hits):
        if not out or window >= out[-1] + len(SEPARATOR):
            out.append(window)
    return out


def _records(data: bytes) -> tuple[list[tuple[list[bytes], bytes]], bytes]:
    """(meta fields, HTTP message) of each record, and what follows the last separator."""
    out = []
    start = 0
    for position in _separators(data):
        chunk = data[start:position].lstrip(b"\n")
        start = position + len(SEPARATOR)
        if not chunk.strip():
            continue
        meta, _, message = chunk.partition(b"\n")
        out.append((meta.split(), message))
    return out, data[start:]


# A response's third field is its own start time (Unix ns) in every GoReplay version that
# writes one; values this small are not times since 1970 but durations (very old writers put
# the round trip there).
_PLAUSIBLE_NS = 10**15


def read_gor(path: str | Path, stats: CaptureStats | None = None) -> Iterator[Exchange]:
    """Every complete request of a GoReplay file, paired with its original response.
    Raises ``CaptureError`` when the file cannot be read or is not gzip (``.gz``).

    Read the way GoReplay's own reader reads: records are ordered by their timestamps (an
    answer may be written before its request), an id pairs a request with the next answer
    of that id (ids repeat across a long capture), and the primary's latency is the round
    trip, the answer's start minus the request's start. The fourth header field is *not*
    the round trip: since GoReplay 1.2 it is that message's own duration."""
    stats = stats if stats is not None else CaptureStats()
    path = Path(path)
    raw, torn = _read(path)
    records, tail = _records(raw)
    # Every record ends with the separator: what follows the last one was cut short.
    stats.torn_tail = torn or bool(tail.strip())
    parsed: list[tuple[int, int, int, bytes, bytes]] = []  # (ns, kind, position, id, message)
    widths: set[int] = set()
    for position, (fields, message) in enumerate(records):
        if len(fields) not in (3, 4) or fields[0] not in (b"1", b"2", b"3"):
            stats.corrupt += 1
            continue
        try:
            stamp = int(fields[2])
            if len(fields) == 4:
                int(fields[3])
        except (ValueError, OverflowError):
            stats.corrupt += 1
            continue
        widths.add(len(fields))
        parsed.append((stamp, int(fields[0]), position, fields[1], message))
    stats.header = {
        "format": "goreplay",
        "version": _version(widths),
        "file": path.name,
    }
    # GoReplay's reader sorts by timestamp; at equal times a request comes before answers.
    parsed.sort(key=lambda r: (r[0], r[1], r[2]))
    pending: dict[bytes, tuple[Exchange, int]] = {}  # id -> (request, its start ns)
    order: list[Exchange] = []
    sequence = 0
    for stamp, kind, _, ident, message in parsed:
        first, headers, body = _split_message(message)
        if kind == 1:
            parts = first.split(b" ")
            if len(parts) < 2 or not parts[0] or not parts[1]:
                stats.corrupt += 1
                continue
            method, target = parts[0].decode("latin-1"), parts[1].decode("latin-1")
            sequence += 1
            request = Request(
                method=method, target=target, headers=headers, body=body, received_at=stamp / 1e9
            )
            exchange = Exchange(
                id=sequence, request=request, endpoint=f"{method} {auto_template(request.path)}"
            )
            pending[ident] = (exchange, stamp)  # a reused id: the next answer, latest request
            order.append(exchange)
        elif kind == 2:
            paired = pending.pop(ident, None)
            parts = first.split(b" ", 2)
            if paired is None or len(parts) < 2 or not _STATUS.match(parts[1]):
                stats.corrupt += 1
                continue
            exchange, request_ns = paired
            exchange.answers[PRIMARY] = Answer(
                target=PRIMARY,
                status=int(parts[1]),
                headers=headers,
                body=body,
                body_size=len(body),
                latency=_round_trip(request_ns, stamp),
            )
        else:
            stats.header["replayed_responses_skipped"] = (
                stats.header.get("replayed_responses_skipped", 0) + 1
            )
    for exchange in order:
        stats.records += 1
        yield exchange


def _round_trip(request_ns: int, answer_ns: int) -> float:
    if answer_ns < _PLAUSIBLE_NS:  # a duration, from a very old writer
        return answer_ns / 1e9
    return max(0, answer_ns - request_ns) / 1e9  # in integers: ns survive the subtraction


def _version(widths: set[int]) -> str:
    """Which GoReplay wrote the file, as far as its payload headers tell."""
    if widths == {3}:
        return "v0 (3-field payload headers: type id timestamp)"
    if widths == {4}:
        return "v1 (4-field payload headers: type id timestamp duration)"
    if widths:
        return "mixed (3- and 4-field payload headers)"
    return "unknown (no readable payload header)"


def _read(path: Path) -> tuple[bytes, bool]:
    """The file's bytes, decompressed for ``.gz``; True when a gzip stream was cut short
    (everything before the cut is kept)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from exc
    if not path.name.endswith(".gz"):
        return raw, False
    if raw[:2] != b"\x1f\x8b":
        raise CaptureFormatError(f"{path}: not a gzip file (a .gor.gz must be gzip-compressed)")
    out = bytearray()
    rest = raw
    while rest[:2] == b"\x1f\x8b":  # gzip allows several members one after another
        inflater = zlib.decompressobj(wbits=31)
        # Fed in pieces, so damage loses only what follows it, not the whole member.
        for start in range(0, len(rest), _PIECE):
            try:
                out += inflater.decompress(rest[start : start + _PIECE])
            except zlib.error as exc:
                if not out:
                    raise CaptureFormatError(f"{path}: damaged gzip data ({exc})") from exc
                return bytes(out), True
            if inflater.eof:
                break
        if not inflater.eof:
            return bytes(out), True
        rest = inflater.unused_data
    return bytes(out), False
