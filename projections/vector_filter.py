"""Metadata filters of vector search: equality and ranges on value fields, for FAISS and for Milvus.

``{"kind": "fact", "score": {"$gte": 0.5}, "meta.lang": {"$in": ["en", "fr"]}}`` keeps the records whose
value has ``kind == "fact"``, a number ``score >= 0.5`` and ``meta.lang`` among the two (operators are
``$eq $ne $gt $gte $lt $lte $in``; the same names without ``$`` are accepted too). ``"$key_prefix": "notes/"``
keeps the keys that start with it. A field missing from a value, or of another type than the operand,
never matches. Field names are a closed grammar and
operands are only JSON scalars, so a filter can never become more than conditions on the caller's own
records: the tenant is chosen by the token before any filter applies (its own FAISS index, its own
Milvus collection), and Milvus string operands are escaped literals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

MAX_CONDITIONS = 16
MAX_IN_VALUES = 100
MAX_STRING = 1024
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,3}")
RANGE_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
EQUALITY_OPS = {"eq": "==", "ne": "!="}
OPS = (*EQUALITY_OPS, *RANGE_OPS, "in")
KEY_PREFIX = "$key_prefix"
KEY_PATH = ("$key",)  # a condition on the record's key, not on a value field

Scalar = str | int | float | bool


class InvalidFilter(ValueError):
    """A filter outside the grammar; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Condition:
    path: tuple[str, ...]
    op: str
    operand: Any

    def matches(self, key: str, value: Any) -> bool:
        if self.path == KEY_PATH:
            return key.startswith(self.operand)
        for name in self.path:
            if not isinstance(value, dict) or name not in value:
                return False
            value = value[name]
        if self.op == "in":
            return any(_equal(value, item) for item in self.operand)
        if self.op in EQUALITY_OPS:
            return _equal(value, self.operand) == (self.op == "eq")
        if not _is_number(value):
            return False
        return {"gt": value > self.operand, "gte": value >= self.operand,
                "lt": value < self.operand, "lte": value <= self.operand}[self.op]

    def milvus(self) -> str:
        if self.path == KEY_PATH:
            raise InvalidFilter(f'{KEY_PREFIX} is answered by the FAISS view: search without "backend", '
                                'or with "backend": "faiss"')
        field = "value" + "".join(f'["{name}"]' for name in self.path)
        if self.op == "in":  # as equalities: Milvus Lite takes `in` on columns only, not on JSON paths
            return " or ".join(f"{field} == {_literal(item)}" for item in self.operand)
        return f"{field} {EQUALITY_OPS.get(self.op) or RANGE_OPS[self.op]} {_literal(self.operand)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(value: Any, operand: Scalar) -> bool:
    if isinstance(operand, bool) or isinstance(value, bool):
        return isinstance(operand, bool) and isinstance(value, bool) and value == operand
    if _is_number(operand):
        return _is_number(value) and value == operand
    return isinstance(value, str) and value == operand


def _literal(operand: Scalar) -> str:
    if isinstance(operand, bool):
        return "true" if operand else "false"
    if isinstance(operand, str):
        return orjson.dumps(operand).decode()  # a double-quoted literal, every quote and backslash escaped
    return repr(operand)


def _scalar(raw: Any, where: str, numbers_only: bool = False) -> Scalar:
    if numbers_only and not _is_number(raw):
        raise InvalidFilter(f"{where} must be a number, got {raw!r}")
    if isinstance(raw, str):
        if len(raw) > MAX_STRING or "\r" in raw or "\n" in raw:
            raise InvalidFilter(f"{where} must be a string of at most {MAX_STRING} characters without line breaks")
        return raw
    if isinstance(raw, bool) or (isinstance(raw, int) and abs(raw) < 2**63):
        return raw
    if isinstance(raw, float) and math.isfinite(raw):
        return raw
    raise InvalidFilter(f"{where} must be a string, a number or a boolean, got {raw!r}")


def parse_filter(raw: Any) -> list[Condition]:
    """Parse a request's ``filter``; raises InvalidFilter with the reason."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise InvalidFilter('filter must be an object such as {"kind": "fact", "score": {"$gte": 0.5}}')
    conditions: list[Condition] = []
    for field, spec in raw.items():
        if field == KEY_PREFIX:
            if not isinstance(spec, str) or not spec or len(spec) > MAX_STRING:
                raise InvalidFilter(f"filter[{KEY_PREFIX!r}] must be a non-empty string of at most {MAX_STRING} "
                                    "characters")
            conditions.append(Condition(KEY_PATH, "prefix", spec))
            continue
        if not isinstance(field, str) or not _FIELD.fullmatch(field):
            raise InvalidFilter(f"filter field {field!r} must be a value field name (letters, digits, _), "
                                "optionally dotted into nested objects (at most 4 levels)")
        path = tuple(field.split("."))
        if not isinstance(spec, dict):
            conditions.append(Condition(path, "eq", _scalar(spec, f"filter[{field!r}]")))
            continue
        if not spec:
            raise InvalidFilter(f"filter[{field!r}] is an empty object; use one of {', '.join('$' + op for op in OPS)}")
        for written, operand in spec.items():
            where = f"filter[{field!r}][{written!r}]"
            op = written.removeprefix("$") if isinstance(written, str) else written
            if op == "in":
                if not isinstance(operand, list) or not 1 <= len(operand) <= MAX_IN_VALUES:
                    raise InvalidFilter(f"{where} must be a list of 1 to {MAX_IN_VALUES} values")
                conditions.append(Condition(path, op, tuple(_scalar(item, where) for item in operand)))
            elif op in EQUALITY_OPS or op in RANGE_OPS:
                conditions.append(Condition(path, op, _scalar(operand, where, numbers_only=op in RANGE_OPS)))
            else:
                raise InvalidFilter(f"{where}: unknown operator; use one of {', '.join('$' + op for op in OPS)}")
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidFilter(f"filter has {len(conditions)} conditions; the limit is {MAX_CONDITIONS}")
    return conditions


def matches_all(conditions: list[Condition], key: str, value: Any) -> bool:
    return all(condition.matches(key, value) for condition in conditions)


def milvus_expression(conditions: list[Condition]) -> str:
    return " and ".join(f"({condition.milvus()})" for condition in conditions)
