"""Structural diff of two parsed JSON documents: the hot path of the diff stage.

Paths are JSONPath-like: ``$``, ``$.a.b``, ``$.items[3].price``, ``$["a b"]``. Each
difference has its exact path and a generic one with indices as ``[*]`` for aggregation.
Equal subtrees are skipped before anything is allocated for them: one ``==`` (done in C by
the dicts and lists themselves); because Python holds ``True == 1`` and ``1 == 1.0``, the
containers it called equal are confirmed together at the end with one ``orjson.dumps`` per
side (also C). Changed scalars are handled in the loop over their parent, without a
recursive call. ``true`` vs ``1`` is a ``type`` difference; ``100`` vs ``100.0`` is a
``number_type`` one (same number, but integer vs not).

Arrays of different lengths get one ``array_length`` difference at the array, then their
common prefix is compared element by element (an element inserted at the front therefore
shows as changes all along: the length difference says why).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shadowd.diff.model import Difference, DiffKind
from shadowd.diff.rules import RuleSet

MAX_DEPTH = 64
MAX_STRING = 200

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEY_CACHE: dict[str, str] = {}
_KEY_CACHE_LIMIT = 50_000

_TYPE, _NUMBER_TYPE, _CHANGED, _MISSING, _EXTRA, _LENGTH = (
    DiffKind.TYPE,
    DiffKind.NUMBER_TYPE,
    DiffKind.CHANGED,
    DiffKind.MISSING,
    DiffKind.EXTRA,
    DiffKind.ARRAY_LENGTH,
)


def key_segment(key: str) -> str:
    """``.name`` for identifier keys, ``["any key"]`` otherwise (cached: keys repeat)."""
    segment = _KEY_CACHE.get(key)
    if segment is None:
        if _IDENTIFIER.match(key):
            segment = "." + key
        else:
            segment = "[" + orjson.dumps(key).decode() + "]"
        if len(_KEY_CACHE) >= _KEY_CACHE_LIMIT:
            _KEY_CACHE.clear()
        _KEY_CACHE[key] = segment
    return segment


def shown(value: Any) -> Any:
    """A value as samples show it: scalars as they are (long strings cut), containers as a
    summary of their shape."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if kind is dict:
        return {"type": "object", "keys": len(value)}
    if kind is list:
        return {"type": "array", "length": len(value)}
    return value


# Difference is a frozen dataclass, whose __init__ sets each field through
# object.__setattr__ (0.43 µs a difference); DiffCollector.add sets its slots directly and
# makes the same object in 0.22 µs (a few differences per exchange, ~6 in the bench's).
_new = object.__new__
_set_path = Difference.path.__set__  # type: ignore[attr-defined,misc]  # slot descriptors of a frozen dataclass
_set_generic = Difference.generic_path.__set__  # type: ignore[attr-defined,misc]  # slot descriptors of a frozen dataclass
_set_kind = Difference.kind.__set__  # type: ignore[attr-defined,misc]  # slot descriptors of a frozen dataclass
_set_reference = Difference.reference.__set__  # type: ignore[attr-defined,misc]  # slot descriptors of a frozen dataclass
_set_other = Difference.other.__set__  # type: ignore[attr-defined,misc]  # slot descriptors of a frozen dataclass


class DiffCollector:
    """Collects differences up to ``limit``; counts the rest.

    ``rules`` (the endpoint's ``[[diff.rules]]``) absorb differences as they come, counted
    per rule name in ``absorbed``: before the cap, so that ignorable differences never use
    it up and push a real one out of the list.
    """

    __slots__ = ("absorbed", "differences", "limit", "overflow", "rules", "unconfirmed")

    def __init__(
        self, limit: int, rules: RuleSet | None = None, absorbed: dict[str, int] | None = None
    ) -> None:
        self.differences: list[Difference] = []
        self.limit = limit
        self.overflow = 0
        self.rules = rules.rules if rules is not None and rules.rules else None
        self.absorbed: dict[str, int] = absorbed if absorbed is not None else {}
        # Containers that == called equal, awaiting confirmation (see diff_json):
        # (reference, other, parent path, parent generic path, key or index, depth)
        self.unconfirmed: list[tuple[Any, Any, str, str, Any, int]] = []

    def add(self, kind: DiffKind, path: str, generic: str, reference: Any, other: Any) -> None:
        rules = self.rules
        if rules is None and len(self.differences) >= self.limit:
            self.overflow += 1
            return
        d = _new(Difference)  # Difference(path, generic, kind, reference, other), faster
        _set_path(d, path)
        _set_generic(d, generic)
        _set_kind(d, kind)
        _set_reference(d, reference)
        _set_other(d, other)
        if rules is not None:
            for rule in rules:
                if rule.absorbs(d):
                    name = rule.rule.name
                    self.absorbed[name] = self.absorbed.get(name, 0) + 1
                    return
            if len(self.differences) >= self.limit:
                self.overflow += 1
                return
        self.differences.append(d)


def diff_json(reference: Any, other: Any, out: DiffCollector, root: str = "$") -> None:
    """Add the differences between two parsed JSON values to ``out``."""
    _diff(reference, other, root, root, out, 0)
    if out.unconfirmed:
        _confirm(out)


def _confirm(out: DiffCollector) -> None:
    """Walk the containers == called equal that are not (``out.unconfirmed``).

    Python holds True == 1 == 1.0, so containers == called equal may hide a bool/number or
    an int/float swap. One orjson.dumps of all of them per side confirms them together
    (per-pair dumps cost more than the whole walk); only when that fails are they checked
    one by one."""
    while out.unconfirmed:
        pending, out.unconfirmed = out.unconfirmed, []
        if orjson.dumps([p[0] for p in pending]) == orjson.dumps([p[1] for p in pending]):
            return
        for a, b, path, generic, step, depth in pending:
            if orjson.dumps(a) == orjson.dumps(b):
                continue
            if type(step) is int:
                _diff(a, b, f"{path}[{step}]", generic + "[*]", out, depth)
            else:
                segment = key_segment(step)
                _diff(a, b, path + segment, generic + segment, out, depth)


_CONTAINERS = (dict, list)
# Scalars whose types are the same JSON type: int and float are both numbers.
_NUMBERS = (int, float)


def _scalar(a: Any, b: Any, path: str, generic: str, out: DiffCollector) -> None:
    """Two values of which at least one is not a container, already known to differ."""
    ta = type(a)
    tb = type(b)
    if ta is tb:
        if a != b:  # scalars: only strings are shown otherwise than they are
            if ta is str:  # shown(), without the calls for strings short enough
                out.add(
                    _CHANGED,
                    path,
                    generic,
                    a if len(a) <= MAX_STRING else shown(a),
                    b if len(b) <= MAX_STRING else shown(b),
                )
            else:
                out.add(_CHANGED, path, generic, a, b)
    elif ta in _NUMBERS and tb in _NUMBERS:  # int and float (bool is neither: a TYPE)
        # 100 vs 100.0: equal, but strictly typed clients refuse a float for an integer.
        out.add(_CHANGED if a != b else _NUMBER_TYPE, path, generic, a, b)
    else:
        out.add(_TYPE, path, generic, shown(a), shown(b))


def _diff(a: Any, b: Any, path: str, generic: str, out: DiffCollector, depth: int) -> None:
    ta = type(a)
    tb = type(b)
    if depth >= MAX_DEPTH:
        if a != b or ta is not tb:
            out.add(_CHANGED, path, generic, shown(a), shown(b))
        return
    if ta is dict and tb is dict:
        missing = 0
        for key, va in a.items():
            if key in b:
                vb = b[key]
                # The same object: a member PreparedAnswer.document shares between documents
                # (or a singleton). Equal and of the same types all the way down, so neither
                # == nor the confirmation. Costs <= 3 % on the 64 KB pairs of diff_bench.
                if va is vb:
                    continue
                tva = type(va)
                if tva is type(vb) and va == vb:
                    if tva in _CONTAINERS:
                        out.unconfirmed.append((va, vb, path, generic, key, depth + 1))
                    continue
                segment = _KEY_CACHE.get(key) or key_segment(key)
                if tva in _CONTAINERS and type(vb) is tva:
                    _diff(va, vb, path + segment, generic + segment, out, depth + 1)
                else:  # the common case: a changed scalar, handled without recursing
                    _scalar(va, vb, path + segment, generic + segment, out)
            else:
                missing += 1
                segment = key_segment(key)
                out.add(_MISSING, path + segment, generic + segment, shown(va), None)
        # b has keys a lacks iff it has more than the len(a) - missing keys both have.
        if len(b) > len(a) - missing:
            for key, vb in b.items():
                if key not in a:
                    segment = key_segment(key)
                    out.add(_EXTRA, path + segment, generic + segment, None, shown(vb))
        return
    if ta is list and tb is list:
        la, lb = len(a), len(b)
        if la != lb:
            out.add(_LENGTH, path, generic, la, lb)
        generic_item = generic + "[*]"
        for i in range(min(la, lb)):
            va = a[i]
            vb = b[i]
            tva = type(va)
            if tva is type(vb) and va == vb:
                if tva in _CONTAINERS:
                    out.unconfirmed.append((va, vb, path, generic, i, depth + 1))
                continue
            if tva in _CONTAINERS and type(vb) is tva:
                _diff(va, vb, f"{path}[{i}]", generic_item, out, depth + 1)
            else:
                _scalar(va, vb, f"{path}[{i}]", generic_item, out)
        return
    _scalar(a, b, path, generic, out)
