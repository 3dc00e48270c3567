"""Many rows into one table, handed to the database driver as tuples.

SQLAlchemy's executemany of a list of dicts compiles its statement once but still processes
every row in Python: each row's parameters are checked against the compiled statement and run
through the column types one value at a time (``construct_params``, ~20 µs a row). While a
mailbox is seeded that was most of the cost of writing the outbox, inbox, catalogue and id-map
rows, one row per message on each side. :func:`insert_rows` prepares the INSERT once per table
and column list, applies only the conversions the dialect really has for a column's type (the
type's bind processor: SQLite's text form of a ``DateTime``, say) and passes the tuples to the
driver's ``executemany`` in the caller's transaction.

:func:`insert_rows_with_ids` also hands out the integer keys of an autoincrement column and
returns them in row order, which a multi-row ``INSERT … RETURNING`` sorted by parameter order
did at SQLAlchemy's per-row cost:

* PostgreSQL: the keys are drawn from the column's sequence in one query, then inserted
  explicitly (a sequence never hands a value out twice, whoever else inserts meanwhile).
* SQLite: the first row is inserted by SQLAlchemy, which takes the database's write lock for
  the rest of the transaction and returns its key; no key above it has ever been used (that is
  how SQLite chooses one), and no other writer can take one before this transaction ends, so
  the other rows take the keys that follow it.

Columns a caller leaves out get their Python-side default, as Core would give it: a value
(``default=0``) or a function called for each row (``default=utcnow``); a default that runs in
SQL is refused (give the column).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from mailrepl.shared.errors import StoreError

__all__ = ["insert_rows", "insert_rows_with_ids"]

_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


class _Prepared:
    """One table's INSERT of a column list, for one dialect."""

    __slots__ = ("sql", "convert", "defaults")

    def __init__(self, dialect: Dialect, table: Table, columns: Sequence[str]) -> None:
        mark = _MARKS.get(dialect.paramstyle)
        if mark is None:
            raise StoreError(f"state store: the {dialect.name} driver's parameter style {dialect.paramstyle!r} is "
                             "not supported (use SQLite or PostgreSQL)", retryable=False)
        given = list(columns)
        defaults: list[Callable[[], Any]] = []
        for col in table.columns:
            default = col.default
            if col.name in given or default is None:
                continue
            if default.is_scalar:
                defaults.append(lambda value=default.arg: value)
            elif default.is_callable:
                defaults.append(lambda fn=default.arg: fn(None))  # as SQLAlchemy calls it, with no context
            else:
                raise ValueError(f"row_writes: {table.name}.{col.name} has a default SQLAlchemy runs in SQL; give it")
            given.append(col.name)
        unknown = set(columns) - set(table.c.keys())
        if unknown:
            raise ValueError(f"row_writes: {table.name} has no column {sorted(unknown)[0]!r}")
        quote = dialect.identifier_preparer
        self.sql = (f"INSERT INTO {quote.format_table(table)} ({', '.join(quote.quote(c) for c in given)}) "
                    f"VALUES ({', '.join([mark] * len(given))})")
        procs: list[Callable[[Any], Any] | None] = [table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
                                                   for c in given]
        self.convert = None if not any(procs) else tuple(procs)
        self.defaults = tuple(defaults)

    def params(self, rows: Iterable[Sequence]) -> list[tuple]:
        procs = self.convert
        if self.defaults:
            out = [(*row, *(d() for d in self.defaults)) for row in rows]
        else:
            out = [tuple(row) for row in rows]
        if procs is None:
            return out
        return [tuple(v if p is None or v is None else p(v) for p, v in zip(procs, row)) for row in out]


_PREPARED: dict[tuple[str, str, tuple[str, ...]], _Prepared] = {}


def _prepared(dialect: Dialect, table: Table, columns: Sequence[str]) -> _Prepared:
    key = (dialect.name, table.name, tuple(columns))
    hit = _PREPARED.get(key)
    if hit is None:
        hit = _PREPARED[key] = _Prepared(dialect, table, columns)
    return hit


def insert_rows(s: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence]) -> int:
    """Insert ``rows`` (tuples in the order of ``columns``) into ``table`` in the session's
    transaction; returns how many. Pending ORM changes are flushed first (rows may refer to
    them)."""
    conn = s.connection()
    prep = _prepared(conn.dialect, table, columns)
    params = prep.params(rows)
    if not params:
        return 0
    s.flush()
    conn.exec_driver_sql(prep.sql, params)
    return len(params)


def insert_rows_with_ids(s: Session, table: Table, key: str, columns: Sequence[str],
                         rows: Sequence[Sequence]) -> list[int]:
    """:func:`insert_rows` into a table whose integer primary key ``key`` the database hands out
    (left out of ``columns``); returns the keys given to ``rows``, in order."""
    if not rows:
        return []
    s.flush()
    conn = s.connection()
    col = table.c[key]
    if conn.dialect.name == "postgresql":
        seq = conn.execute(select(func.pg_get_serial_sequence(table.name, key))).scalar_one()
        ids = sorted(conn.execute(text("SELECT nextval(CAST(:seq AS regclass)) FROM generate_series(1, :n)"),
                                  {"seq": seq, "n": len(rows)}).scalars())
        insert_rows(s, table, [key, *columns], ((k, *row) for k, row in zip(ids, rows)))
        return ids
    first = conn.execute(insert(table).returning(col), dict(zip(columns, rows[0]))).scalar_one()
    insert_rows(s, table, [key, *columns], ((first + i, *row) for i, row in enumerate(rows[1:], 1)))
    return list(range(first, first + len(rows)))
