"""Fixtures shared by the unit tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from mailrepl.shared.store import Store, open_store


@pytest.fixture
def store(tmp_path) -> Iterator[Store]:
    """A migrated SQLite state store of its own (a module may define its own ``store`` instead)."""
    st = open_store(f"sqlite:///{tmp_path}/state.sqlite")
    st.migrate()
    yield st
    st.dispose()
