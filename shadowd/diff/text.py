"""Text bodies compared line by line, each line under a key its volatile tokens do not move.

A text answer (text/plain, text/html, text/csv...) used to give one opaque ``body``
difference: a receipt whose print time differs on every answer then hid, under the same
path, a changed total that only the candidate has. Here every line gets a generic key, its
*template*: the line with its volatile tokens (UUIDs, clocks, long hex and alphanumeric
ids, numbers) replaced by a placeholder::

    Printed at 2026-11-29T19:14:52Z      ->  text:line:Printed at <ts>
    Total: 12.50 EUR                     ->  text:line:Total: <n> EUR
    <input name="csrf" value="a8F...">   ->  text:line:<input name="csrf" value="<token>">

The two bodies' lines are aligned on their templates (``difflib.SequenceMatcher``), so an
inserted line does not shift every line after it. Lines whose templates match but whose text
does not are a ``changed`` difference at that key; a line only the reference has is
``missing``, one only the other has is ``extra``; a block of replaced lines is paired up
in order (``changed`` at the reference line's key), its surplus ``missing``/``extra``.

The noise model then does the rest, per key: the print-time line differs on the secondary
too (noise), the total line only on the candidate (a divergence). The exact path says which
line it was: ``text:line[12]:<template>`` (0-based, the reference's line).

When the only tokens that differ are ids or clocks (not plain numbers), the values are
those tokens rather than the lines, so that ``likely_noise`` (no secondary) can recognise
them; the key still says which line.

HTML is split between tags as well as at newlines (a minified page is one line). Bounded:
bodies over ``MAX_TEXT_BYTES`` or ``MAX_LINES`` lines fall back to one ``body`` difference,
lines are cut to ``MAX_LINE_CHARS`` before they are templated, and keys to ``MAX_KEY_CHARS``.
"""

from __future__ import annotations

import difflib
import re

from shadowd.diff.json_diff import DiffCollector
from shadowd.diff.model import DiffKind

MAX_TEXT_BYTES = 64 * 1024  # larger text bodies get one difference with sizes and digests
MAX_LINES = 2000
MAX_LINE_CHARS = 1000
MAX_KEY_CHARS = 120
SHOWN_CHARS = 200

TEXT_MEDIA = ("text/", "application/xml", "application/javascript", "application/csv")

# Order matters: the first alternative that matches at a position wins, so clocks and UUIDs
# come before the hex and number classes that would take their pieces.
_VOLATILE = re.compile(
    r"(?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)"
    r"|(?P<ts>\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2}|\s?UTC|\s?GMT)?)?"
    r"|\b[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT"
    r"|\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b)"
    r"|(?P<epoch>\b1[5-9]\d{8}(?:\d{3})?(?:\.\d+)?\b)"
    # hex ids; also those of 16 or 32 digits that drew no letter (1 in 1,900 of 16-hex ids),
    # or the line would move to another key in that one answer
    r"|(?P<hex>\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"
    r"|\b\d{16}\b|\b\d{32}\b)"
    # a token: 16+ characters with a digit and a letter, or 24+ in both cases without digits
    r"|(?P<token>(?<![\w/+])(?:(?=[A-Za-z0-9_+/]*\d)(?=[A-Za-z0-9_+/]*[A-Za-z])"
    r"[A-Za-z0-9_+/]{16,}|(?=[A-Za-z0-9_+/]*[a-z])(?=[A-Za-z0-9_+/]*[A-Z])"
    r"[A-Za-z0-9_+/]{24,})={0,2}(?![\w/+=]))"
    r"|(?P<n>(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w.]))"
)
_NUMBER = "n"
_EPOCH = "epoch"  # seconds or milliseconds since 1970, 2017 to 2033
_TAG_BOUNDARY = re.compile(r">\s*<")


def is_text(media: str) -> bool:
    return media.startswith(TEXT_MEDIA)


def template_of(line: str) -> tuple[str, list[tuple[str, str]]]:
    """The line's template (volatile tokens as ``<class>``) and its tokens (class, text)."""
    tokens: list[tuple[str, str]] = []

    def placeholder(match: re.Match[str]) -> str:
        kind = match.lastgroup or _NUMBER
        tokens.append((kind, match.group()))
        return f"<{kind}>"

    return _VOLATILE.sub(placeholder, line[:MAX_LINE_CHARS]).strip(), tokens


def split_lines(text: str, media: str) -> list[str]:
    """Lines, with blank ones dropped; HTML also split between tags."""
    if media == "text/html" or media == "application/xhtml+xml":
        text = _TAG_BOUNDARY.sub(">\n<", text)
    return [line for line in text.splitlines() if line.strip()]


def _shown(line: str) -> str:
    line = line.strip()
    return line if len(line) <= SHOWN_CHARS else line[:SHOWN_CHARS] + "…"


def _exact(index: int, template: str) -> str:
    """``text:line[12]:<template>``: the line number, and its template, which is what lets a
    sample's values be hidden when the line names a secret (``redact.value_at``)."""
    return f"text:line[{index}]:{_key(template)[10:]}"


def _key(template: str) -> str:
    if len(template) > MAX_KEY_CHARS:
        template = template[:MAX_KEY_CHARS] + "…"
    return "text:line:" + template


def diff_text(reference: bytes, other: bytes, media: str, out: DiffCollector) -> bool:
    """Add the line differences of two text bodies to ``out``. False (nothing added) when
    the bodies are past the bounds: the caller then reports them as one ``body``."""
    if max(len(reference), len(other)) > MAX_TEXT_BYTES:
        return False
    ref_lines = split_lines(reference.decode("utf-8", "replace"), media)
    oth_lines = split_lines(other.decode("utf-8", "replace"), media)
    if max(len(ref_lines), len(oth_lines)) > MAX_LINES:
        return False
    ref = [template_of(line) for line in ref_lines]
    oth = [template_of(line) for line in oth_lines]
    before = len(out.differences) + out.overflow
    matcher = difflib.SequenceMatcher(None, [t for t, _ in ref], [t for t, _ in oth], False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                if ref_lines[i].strip() != oth_lines[j].strip():
                    _changed(i, ref_lines[i], oth_lines[j], ref[i], oth[j], out)
            continue
        paired = min(i2 - i1, j2 - j1)
        for k in range(paired):
            i, j = i1 + k, j1 + k
            _changed(i, ref_lines[i], oth_lines[j], ref[i], oth[j], out)
        for i in range(i1 + paired, i2):
            out.add(
                DiffKind.MISSING, _exact(i, ref[i][0]), _key(ref[i][0]), _shown(ref_lines[i]), None
            )
        for j in range(j1 + paired, j2):
            out.add(
                DiffKind.EXTRA, _exact(j, oth[j][0]), _key(oth[j][0]), None, _shown(oth_lines[j])
            )
    if len(out.differences) + out.overflow == before:
        # The bodies differ (the caller knows), but only in blank lines or in spaces around
        # lines: still a difference, under its own key.
        out.add(DiffKind.CHANGED, "text:whitespace", "text:whitespace", None, None)
    return True


def _changed(
    index: int,
    ref_line: str,
    oth_line: str,
    ref: tuple[str, list[tuple[str, str]]],
    oth: tuple[str, list[tuple[str, str]]],
    out: DiffCollector,
) -> None:
    reference_value = _shown(ref_line)
    other_value = _shown(oth_line)
    if ref[0] == oth[0]:
        differing = [(a, b) for a, b in zip(ref[1], oth[1], strict=True) if a[1] != b[1]]
        numbers = sum(1 for a, _ in differing if a[0] == _NUMBER)
        if differing and numbers in (0, len(differing)):
            (kind, ref_token), (_, oth_token) = differing[0]
            # Only numbers differ: the first pair, as numbers (a duration's key says so); an
            # epoch time too, so that it is judged as a clock near now. Otherwise the first
            # differing token rather than the whole line.
            if numbers or kind == _EPOCH:
                out.add(
                    DiffKind.CHANGED,
                    _exact(index, ref[0]),
                    _key(ref[0]),
                    float(ref_token),
                    float(oth_token),
                )
                return
            reference_value, other_value = ref_token, oth_token
    out.add(DiffKind.CHANGED, _exact(index, ref[0]), _key(ref[0]), reference_value, other_value)
