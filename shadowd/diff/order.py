"""Which differences of a JSON pair are only a set-like array in another order (pure).

The JSON diff compares arrays element by element (an array's order usually matters to its
clients), so ``["a", "b"]`` vs ``["b", "a"]`` are two ``changed`` elements. Many services
emit sets as arrays (tags, permissions, a dict's keys) in an order that varies per instance
or per answer. With a secondary that is learned as noise; without one, ``noise.likely_noise``
uses what this module finds: the differences inside an array that holds the same elements
(as a multiset) on both sides. The diff itself is unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from shadowd.diff.model import Difference

_INDEX = re.compile(r"\[(\d+)\]")
_STEP = re.compile(r'\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]|\[("(?:[^"\\]|\\.)*")\]')
_MISSING = object()
MAX_CHECKED_ARRAYS = 16  # arrays checked per pair: bounded work on a reordered document


def _resolve(document: Any, path: str) -> Any:
    """The value at an exact path (``$.a[2]["b c"]``), or ``_MISSING``."""
    value = document
    position = 1  # after "$"
    for m in _STEP.finditer(path, position):
        if m.start() != position:
            return _MISSING
        position = m.end()
        name, index, quoted = m.groups()
        if index is not None:
            if type(value) is not list or int(index) >= len(value):
                return _MISSING
            value = value[int(index)]
            continue
        key = name if name is not None else orjson.loads(quoted)
        if type(value) is not dict or key not in value:
            return _MISSING
        value = value[key]
    return value if position == len(path) else _MISSING


def _same_multiset(a: Any, b: Any) -> bool:
    if type(a) is not list or type(b) is not list or len(a) != len(b) or a == b:
        return False
    dump = orjson.OPT_SORT_KEYS
    return sorted(orjson.dumps(v, option=dump) for v in a) == sorted(
        orjson.dumps(v, option=dump) for v in b
    )


def reordered_paths(differences: list[Difference], reference: Any, other: Any) -> frozenset[str]:
    """Exact paths of ``differences`` lying inside an array that has the same elements in
    both documents, in another order (the outermost such array decides)."""
    verdicts: dict[str, bool] = {}
    found: list[str] = []
    for difference in differences:
        path = difference.path
        if not path.startswith("$") or "[" not in path:
            continue
        for m in _INDEX.finditer(path):
            array = path[: m.start()]
            same = verdicts.get(array)
            if same is None:
                if len(verdicts) >= MAX_CHECKED_ARRAYS:
                    break
                same = verdicts[array] = _same_multiset(
                    _resolve(reference, array), _resolve(other, array)
                )
            if same:
                found.append(path)
                break
    return frozenset(found)
