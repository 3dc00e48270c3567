"""Long ``IN (...)`` lists in bounded pieces.

A statement with thousands of bound values hits SQLite's variable limit and makes PostgreSQL
plan a huge list; every query or delete over an open-ended set of keys takes them
:data:`IN_CHUNK` at a time.
"""
from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

__all__ = ["IN_CHUNK", "chunks"]

IN_CHUNK = 500

T = TypeVar("T")


def chunks(values: Iterable[T], size: int = IN_CHUNK) -> Iterator[list[T]]:
    """``values`` in consecutive lists of at most ``size`` (none for no values)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    items = values if isinstance(values, list) else list(values)
    for i in range(0, len(items), size):
        yield items[i : i + size]
