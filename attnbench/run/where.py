"""``--where``: run a subset of a suite or sweep without writing a YAML file.

    attnbench perf --sweep piecewise_seqlen --where "seqlen>=2048,causal=true,head_dim=64|128"

Comma-separated conditions on case fields (``attnbench.problems.attention.case.Case`` and its problem's fields,
e.g. ``dist_threshold``), all of which must hold: ``field=a|b`` (any of), ``field!=a|b`` (none
of), ``field>=n``, ``field<=n``, ``field>n``, ``field<n`` (one value: ``|`` is an error there).
``--where`` may be given several times: every condition of every one must hold. ``seqlen`` means
``seqlen_q``; values are compared as the field's type (``true``/``false`` for booleans, dtype
names as written in configs). The derived flags ``varlen``, ``gqa`` and ``windowed`` (result
columns too) filter like boolean fields. An unknown field, a value of the wrong type or a
``--where`` with no condition in it (``","``, ``" "``) is a one-line error (exit 2).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields

from ..problems.base import DTYPE_ALIASES, Case

ALIASES = {"seqlen": "seqlen_q", "heads": "heads_q"}
DERIVED = {"varlen": bool, "gqa": bool, "windowed": bool}  # Case properties
OPS = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    "=": None,  # membership in the |-separated values
}
_COND = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|!=|>|<|=)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    values: tuple

    def holds(self, case: Case) -> bool:
        if not hasattr(case, self.field):  # a field of another problem: never matches
            return False
        got = getattr(case, self.field)
        if self.op == "=":
            return got in self.values
        if self.op == "!=":
            return got not in self.values
        if got is None:
            return False
        return OPS[self.op](got, self.values[0])


def _convert(field: str, raw: str, kind: type | str):
    text = raw.strip()
    kind = str(kind)
    if field == "dtype":
        if text.lower() not in DTYPE_ALIASES:
            raise ValueError(f"dtype={text}: not one of fp16, bf16, fp32")
        return DTYPE_ALIASES[text.lower()]
    if "bool" in kind:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{field}={text}: expected true or false")
        return text.lower() in ("true", "1", "yes")
    if "int" in kind and "tuple" not in kind:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{field}={text}: expected an integer") from None
    if "float" in kind:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{field}={text}: expected a number") from None
    raise ValueError(f"{field}: cannot filter on this field")


def parse_where(text: str | Sequence[str] | None, case_types: list[type[Case]]) -> list[Condition]:
    """Conditions from ``--where`` text (or several: all of their conditions apply), checked
    against the fields of ``case_types``. ``None`` or ``""``: no condition; text that holds no
    condition (``","``, ``" "``) is an error, never "every case"."""
    if text is None:
        return []
    if not isinstance(text, str):
        return [c for t in text for c in parse_where(t, case_types) or _nothing(t)]
    if not text:
        return []
    types = {f.name: f.type for t in case_types for f in fields(t)}
    types |= {n: k for n, k in DERIVED.items() if all(hasattr(t, n) for t in case_types)}
    conds = []
    for part in text.split(","):
        if not part.strip():
            continue
        m = _COND.match(part)
        if m is None:
            raise ValueError(f"--where: {part.strip()!r} is not FIELD=VALUE, FIELD>=N, ...")
        name, op, raw = m.groups()
        name = ALIASES.get(name, name)
        if name not in types:
            known = ", ".join(sorted(set(types) | set(ALIASES)))
            raise ValueError(f"--where: unknown field {name!r} (fields: {known})")
        if name == "dtype" and op not in ("=", "!="):
            raise ValueError("--where: dtype takes = or !=")
        if "|" in raw and op not in ("=", "!="):
            raise ValueError(
                f"--where: {part.strip()!r}: | (any of) goes with = or != only; "
                f"{op} takes one value"
            )
        try:
            values = tuple(_convert(name, v, types[name]) for v in raw.split("|"))
        except ValueError as e:
            raise ValueError(f"--where: {e}") from None
        conds.append(Condition(name, op, values))
    return conds or _nothing(text)


def _nothing(text: str) -> list[Condition]:
    """A ``--where`` that was given but holds no condition: an error (it would run everything)."""
    if not text:
        raise ValueError("--where given empty; leave it out to run every case")
    raise ValueError(f"--where {text!r} holds no condition; leave it out to run every case")


def keep(cases: list[Case], conds: list[Condition]) -> list[Case]:
    """The cases for which every condition holds."""
    return [c for c in cases if all(cond.holds(c) for cond in conds)]
