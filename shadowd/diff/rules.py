"""Named diff rules: explained exceptions that never hide a break unseen.

Each ``[[diff.rules]]`` entry says where it applies (endpoint glob, JSON path with
wildcards, or header) and what it does:

- ``ignore``: differences at the path (or beneath it) or on the header are absorbed;
- ``tolerance``: numeric changes within ``absolute`` or ``relative`` are absorbed;
- ``normalize``: string changes that vanish once ``pattern`` is replaced on both sides;
- ``unordered``: arrays at the path are compared as multisets (sorted first, by ``key`` for
  arrays of objects);
- ``set``: like unordered, duplicates collapsed too.

Every absorbed difference is counted per rule, and the report shows the counts, so a rule
that swallows a real break is visible. Differences are absorbed as they are found
(``DiffCollector``), before the per-pair cap: ignorable ones never use it up.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Any

import orjson

from shadowd.config import DiffRule
from shadowd.diff.model import Difference, DiffKind

_NUMERIC = (int, float)


def path_pattern(path: str) -> re.Pattern[str]:
    """A rule path as a regex over generic paths: ``[*]`` any index, ``.*`` any key, and
    whatever is beneath the path matches too."""
    regex = ""
    i = 0
    while i < len(path):
        if path.startswith("[*]", i):
            regex += r"\[\*\]"
            i += 3
        elif path.startswith(".*", i):
            regex += r'(?:\.[^.\[]+|\["(?:[^"\\]|\\.)*"\])'
            i += 2
        else:
            regex += re.escape(path[i])
            i += 1
    return re.compile(regex + r"(?:$|[.\[])")


class CompiledRule:
    __slots__ = ("_path", "header_path", "rule")

    def __init__(self, rule: DiffRule) -> None:
        self.rule = rule
        self._path = path_pattern(rule.path) if rule.path else None
        self.header_path = f"header.{rule.header.lower()}" if rule.header else None

    def applies_to(self, endpoint: str) -> bool:
        return self.rule.endpoint is None or fnmatch.fnmatchcase(endpoint, self.rule.endpoint)

    def covers(self, generic_path: str) -> bool:
        if self.header_path is not None:
            return generic_path == self.header_path
        return self._path is not None and self._path.match(generic_path) is not None

    def absorbs(self, d: Difference) -> bool:
        if not self.covers(d.generic_path):
            return False
        action = self.rule.action
        if action == "ignore":
            return True
        if action == "tolerance":
            a, b = d.reference, d.other
            if d.kind != DiffKind.CHANGED or type(a) not in _NUMERIC or type(b) not in _NUMERIC:
                return False
            gap: float = abs(a - b)
            return gap <= self.rule.absolute or gap <= self.rule.relative * max(abs(a), abs(b))
        if action == "normalize":
            a, b = d.reference, d.other
            if not isinstance(a, str) or not isinstance(b, str) or self.rule.pattern is None:
                return False
            pattern = self.rule.pattern
            return re.sub(pattern, self.rule.replacement, a) == re.sub(
                pattern, self.rule.replacement, b
            )
        return False  # unordered/set act before the diff (see reorder)


class RuleSet:
    """The rules that apply to one endpoint."""

    def __init__(self, rules: list[CompiledRule]) -> None:
        self.rules = rules
        self.array_rules = [r for r in rules if r.rule.action in ("unordered", "set")]

    def reorder(self, doc: Any) -> Any:
        """Sort (and for sets dedupe) the arrays the unordered/set rules cover, in place."""
        for rule in self.array_rules:
            _walk_arrays(doc, "$", rule, _sorter(rule.rule))
        return doc


def _sorter(rule: DiffRule) -> Callable[[list[Any]], list[Any]]:
    def canonical(item: Any) -> bytes:
        if rule.key is not None and isinstance(item, dict):
            return orjson.dumps(item.get(rule.key))
        return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)

    def sort(items: list[Any]) -> list[Any]:
        ordered = sorted(items, key=canonical)
        if rule.action == "set":
            seen: set[bytes] = set()
            unique = []
            for item in ordered:
                c = canonical(item)
                if c not in seen:
                    seen.add(c)
                    unique.append(item)
            return unique
        return ordered

    return sort


def _walk_arrays(
    doc: Any, path: str, rule: CompiledRule, sort: Callable[[list[Any]], list[Any]]
) -> None:
    from shadowd.diff.json_diff import key_segment

    if isinstance(doc, dict):
        for key, value in doc.items():
            child = path + key_segment(key)
            if isinstance(value, list) and _exactly(rule, child):
                doc[key] = value = sort(value)
            if isinstance(value, dict | list):
                _walk_arrays(value, child, rule, sort)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            child = path + "[*]"
            if isinstance(value, list) and _exactly(rule, child):
                doc[i] = value = sort(value)
            if isinstance(value, dict | list):
                _walk_arrays(value, child, rule, sort)


def _exactly(rule: CompiledRule, generic_path: str) -> bool:
    """The array itself is what the rule names (not something beneath it)."""
    match = rule._path.match(generic_path) if rule._path is not None else None
    return match is not None and match.end() == len(generic_path)


_CACHE: dict[tuple[tuple[DiffRule, ...], str], RuleSet] = {}


def rules_for(rules: tuple[DiffRule, ...], endpoint: str) -> RuleSet:
    key = (rules, endpoint)
    found = _CACHE.get(key)
    if found is None:
        if len(_CACHE) > 10_000:
            _CACHE.clear()
        compiled = [CompiledRule(r) for r in rules]
        found = _CACHE[key] = RuleSet([r for r in compiled if r.applies_to(endpoint)])
    return found


EMPTY = RuleSet([])
