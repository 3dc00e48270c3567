"""A small evaluator of the PromQL that ``deploy/prometheus/mailrepl-alerts.yml`` uses, for
checking the rules against a gateway's real ``/metrics`` where ``promtool`` is not installed.

Supported: numbers, ``time()``, instant selectors with ``=``, ``!=``, ``=~``, ``!~`` matchers,
range selectors inside ``increase``/``delta`` (evaluated over two scrapes: the earlier and the
later one, as Prometheus would with those two samples in the range — a series missing from the
earlier scrape gives no result), ``sum``/``max``/``min``/``count`` ``by (…)``, ``+ - * /`` with a
scalar and the comparisons as filters. Anything else is a ``SyntaxError``: a rule this cannot
read fails the test rather than passing unchecked.
"""
from __future__ import annotations

import re
import time
from typing import Mapping

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["parse_metrics", "evaluate", "Series"]

Series = dict[frozenset, float]  # labels (incl. __name__) -> value
_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<dur>\[\d+[smhd]\])|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)"
                    r"|(?P<str>\"(?:[^\"\\]|\\.)*\")|(?P<op>==|!=|>=|<=|=~|!~|[-+*/(){},=<>]))")


def parse_metrics(text: str, extra: Mapping[str, str] | None = None) -> Series:
    out: Series = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = {**s.labels, **(extra or {}), "__name__": s.name}
            out[frozenset(labels.items())] = float(s.value)
    return out


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise SyntaxError(f"cannot read {expr[pos:]!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Eval:
    def __init__(self, expr: str, before: Series, now: Series, at: float) -> None:
        self.toks, self.i, self.before, self.now, self.at = _tokens(expr), 0, before, now, at

    def peek(self, k: int = 0):
        return self.toks[self.i + k] if self.i + k < len(self.toks) else (None, None)

    def take(self, value: str | None = None):
        tok = self.peek()
        if value is not None and tok[1] != value:
            raise SyntaxError(f"expected {value!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def run(self):
        v = self.cmp()
        if self.i != len(self.toks):
            raise SyntaxError(f"unexpected {self.peek()[1]!r}")
        return v

    def cmp(self):
        left = self.add()
        if self.peek()[1] in (">", "<", "==", "!=", ">=", "<="):
            op = self.take()[1]
            right = self.add()
            if not isinstance(right, float):
                raise SyntaxError("only comparisons with a scalar are supported")
            test = {">": float.__gt__, "<": float.__lt__, "==": float.__eq__, "!=": float.__ne__,
                    ">=": float.__ge__, "<=": float.__le__}[op]
            if isinstance(left, float):
                return left if test(left, right) else None
            return {k: v for k, v in left.items() if test(v, right)}
        return left

    def _arith(self, left, op, right):
        f = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": float.__truediv__}[op]
        if isinstance(left, float) and isinstance(right, float):
            return f(left, right)
        if isinstance(right, float):
            return {_drop_name(k): f(v, right) for k, v in left.items()}
        if isinstance(left, float):
            return {_drop_name(k): f(left, v) for k, v in right.items()}
        raise SyntaxError("vector-vector arithmetic is not supported")

    def add(self):
        v = self.mul()
        while self.peek()[1] in ("+", "-"):
            op = self.take()[1]
            v = self._arith(v, op, self.mul())
        return v

    def mul(self):
        v = self.unary()
        while self.peek()[1] in ("*", "/"):
            op = self.take()[1]
            v = self._arith(v, op, self.unary())
        return v

    def unary(self):
        kind, val = self.peek()
        if kind == "num":
            self.take()
            return float(val)
        if val == "(":
            self.take()
            v = self.cmp()
            self.take(")")
            return v
        if kind == "name" and val == "time" and self.peek(1)[1] == "(":
            self.take(), self.take("("), self.take(")")
            return float(self.at)
        if kind == "name" and val in ("increase", "delta"):
            self.take(), self.take("(")
            name, matchers = self.selector()
            if self.peek()[0] != "dur":
                raise SyntaxError(f"{val}() needs a range")
            self.take()
            self.take(")")
            old = {_key(k): v for k, v in self.before.items() if _match(k, name, matchers)}
            return {_drop_name(k): v - old[_key(k)] for k, v in self.now.items()
                    if _match(k, name, matchers) and _key(k) in old}
        if kind == "name" and val in ("sum", "max", "min", "count"):
            self.take()
            by: tuple[str, ...] = ()
            if self.peek()[1] == "by":
                self.take(), self.take("(")
                names = []
                while self.peek()[1] != ")":
                    names.append(self.take()[1])
                    if self.peek()[1] == ",":
                        self.take()
                self.take(")")
                by = tuple(names)
            self.take("(")
            inner = self.cmp()
            self.take(")")
            groups: dict[frozenset, list[float]] = {}
            for k, v in inner.items():
                labels = dict(k)
                groups.setdefault(frozenset((n, labels[n]) for n in by if n in labels), []).append(v)
            agg = {"sum": sum, "max": max, "min": min, "count": len}[val]
            return {k: float(agg(vs)) for k, vs in groups.items()}
        if kind == "name":
            name, matchers = self.selector()
            if self.peek()[0] == "dur":
                raise SyntaxError("a range selector outside increase()/delta()")
            return {k: v for k, v in self.now.items() if _match(k, name, matchers)}
        raise SyntaxError(f"unexpected {val!r}")

    def selector(self):
        name = self.take()[1]
        matchers = []
        if self.peek()[1] == "{":
            self.take()
            while self.peek()[1] != "}":
                label = self.take()[1]
                op = self.take()[1]
                kind, raw = self.take()
                if kind != "str" or op not in ("=", "!=", "=~", "!~"):
                    raise SyntaxError(f"bad matcher {label}{op}{raw}")
                matchers.append((label, op, raw[1:-1].encode().decode("unicode_escape")))
                if self.peek()[1] == ",":
                    self.take()
            self.take("}")
        return name, matchers


def _key(k: frozenset) -> frozenset:
    return k


def _drop_name(k: frozenset) -> frozenset:
    return frozenset(x for x in k if x[0] != "__name__")


def _match(k: frozenset, name: str, matchers) -> bool:
    labels = dict(k)
    if labels.get("__name__") != name:
        return False
    for label, op, value in matchers:
        have = labels.get(label, "")
        ok = {"=": have == value, "!=": have != value,
              "=~": re.fullmatch(value, have) is not None, "!~": re.fullmatch(value, have) is None}[op]
        if not ok:
            return False
    return True


def evaluate(expr: str, now: Series, before: Series | None = None, at: float | None = None):
    """The value of ``expr``: a float, or a vector (labels -> value; empty: the alert does not fire)."""
    return _Eval(expr, before if before is not None else {}, now, time.time() if at is None else at).run()
