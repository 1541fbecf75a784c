"""The time limit of a read, written as each server flavour wants it: MariaDB's
`SET STATEMENT max_statement_time=... FOR`, MySQL's `MAX_EXECUTION_TIME` optimizer hint; a
statement without the execution option is left alone. (The MariaDB form runs against the real
server in tests/integration/test_product_store.py; MySQL 8.4 runs in the compose tests.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import mysql

from shop.products.tables import products
from shop.storage.database import STATEMENT_SECONDS, _with_time_limit

SELECT = str(select(products.c.id).where(products.c.id == 1).compile(dialect=mysql.dialect()))


def _rewritten(*, mariadb: bool, options: dict[str, Any]) -> str:
    conn = SimpleNamespace(dialect=SimpleNamespace(is_mariadb=mariadb))
    context = SimpleNamespace(execution_options=options)
    statement, parameters = _with_time_limit(conn, None, SELECT, (1,), context, False)
    assert parameters == (1,)
    return statement


def test_mariadb_runs_the_select_under_max_statement_time() -> None:
    written = _rewritten(mariadb=True, options={STATEMENT_SECONDS: 2.0})
    assert written == f"SET STATEMENT max_statement_time=2.000 FOR {SELECT}"


@pytest.mark.parametrize(("seconds", "hint"), [(2.0, 2000), (0.25, 250), (0.0001, 1)])
def test_mysql_gets_the_hint_after_select_in_milliseconds(seconds: float, hint: int) -> None:
    written = _rewritten(mariadb=False, options={STATEMENT_SECONDS: seconds})
    assert written == SELECT.replace("SELECT", f"SELECT /*+ MAX_EXECUTION_TIME({hint}) */", 1)
    assert written.startswith(f"SELECT /*+ MAX_EXECUTION_TIME({hint}) */ products.id")


@pytest.mark.parametrize("mariadb", [True, False])
def test_a_statement_without_the_option_is_left_alone(mariadb: bool) -> None:
    assert _rewritten(mariadb=mariadb, options={}) == SELECT
