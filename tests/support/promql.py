"""Just enough PromQL to list what an expression reads: metric names, their label matchers, grouping labels.

Not a parser of the whole language: it walks the tokens of the expressions this repository writes
(selectors, functions, aggregations with by/without, vector matching with on/ignoring, arithmetic
and comparisons) and refuses anything it does not understand, so that a new construct fails loudly
instead of being skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\.\d+)(?:ms|[smhdwy])?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(),{}])
    """,
    re.VERBOSE,
)
# Words that are never metric names: operators, modifiers, and the aggregations (which may take `by` first).
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
_AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass(frozen=True, slots=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(slots=True)
class References:
    """What one expression reads."""

    selectors: list[tuple[str, list[Matcher]]] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos : pos + 30]!r} in {expr!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return body if literal[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def references(expr: str) -> References:
    """Return the selectors and grouping labels of `expr`; raise ValueError on what this reader does not know."""
    tokens = _tokens(expr)
    found = References()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING:
            i += 1
            if following == "(":
                i += 1
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        found.grouping_labels.add(tokens[i][1])
                    elif tokens[i][1] != ",":
                        raise ValueError(f"unexpected {tokens[i][1]!r} in a label list of {expr!r}")
                    i += 1
                i += 1
            continue
        if kind == "ident" and (following == "(" or text in _AGGREGATIONS or text in _KEYWORDS):
            i += 1  # a function, an aggregation or an operator word
            continue
        if kind == "ident":
            matchers: list[Matcher] = []
            i += 1
            if following == "{":
                i += 1
                while tokens[i][1] != "}":
                    (label_kind, label), (_, op), (value_kind, value) = tokens[i : i + 3]
                    if label_kind != "ident" or op not in {"=", "!=", "=~", "!~"} or value_kind != "string":
                        raise ValueError(f"cannot read the label matcher at {label!r} in {expr!r}")
                    matchers.append(Matcher(label, op, _unquote(value)))
                    i += 3
                    if tokens[i][1] == ",":
                        i += 1
                i += 1
            found.selectors.append((text, matchers))
            continue
        if text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}: name the metric")
        i += 1
    return found
