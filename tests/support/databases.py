"""Running a chat test's shop on PostgreSQL as well as SQLite.

The `shop` fixture runs on SQLite; a test whose outcome depends on the database's own
semantics (row locks and conditional updates under concurrent presses, JSON columns,
a ban read while a checkout starts) is marked `@on_both_databases` and runs once on each.
"""

from __future__ import annotations

import pytest

on_both_databases = pytest.mark.parametrize(
    "shop_database", ["sqlite", "postgresql"], indirect=True
)
