"""Publishing: rows written in one transaction, one multi-row INSERT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from .base import StoreBase


class Inserts(StoreBase):
    def __init__(self, engine: sa.Engine, table_name: str, queue: str) -> None:
        super().__init__(engine, table_name, queue)
        # A one-row INSERT reads its id with RETURNING where the driver's lastrowid does not
        # give it (PostgreSQL), as SQLAlchemy does.
        self._single_returning = not getattr(engine.dialect, "postfetch_lastrowid", True)

    def insert(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Write rows in one transaction, one multi-row INSERT; return their ids in order.

        The INSERT goes straight to the driver's cursor, in SQL written once per number of
        rows: SQLAlchemy's execution path costs more than the round trip of a one-row
        INSERT. When the engine has cursor listeners (query recording, tracing), the rows go
        through SQLAlchemy instead, so that those listeners see the INSERT.
        """
        driver = self.driver
        many_returning = len(rows) > 1 and bool(self.engine.dialect.insert_returning)
        # One row, or several with RETURNING, is one statement: on PostgreSQL it then
        # commits by itself, without a COMMIT round trip of its own.
        single = len(rows) == 1 or many_returning
        with driver.transaction(single_statement=single) as cursor:
            if many_returning:
                # Autoincrement ids are handed out in VALUES order, so the sorted ids line
                # up with the rows whatever order RETURNING lists them in.
                cursor.execute(*driver.insert(rows, returning=True))
                return sorted(int(r[0]) for r in cursor.fetchall())
            ids = []
            for row in rows:  # one row, or several without RETURNING (MySQL 8): one by one
                cursor.execute(*driver.insert((row,), returning=self._single_returning))
                ids.append(
                    int(cursor.fetchone()[0] if self._single_returning else cursor.lastrowid)
                )
            return ids
