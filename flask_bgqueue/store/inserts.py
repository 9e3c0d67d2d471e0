"""Publishing: rows written in one transaction, one multi-row INSERT."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..exceptions import ParametersError
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
        limit = self.dialect.max_statement_bytes()
        if limit is not None:
            # Rows over the server's statement limit are refused here, with the reason;
            # the others go in statements within it (each its own transaction, as the
            # chunks of a bulk are).
            return [i for chunk in _within(rows, limit) for i in self._insert(chunk)]
        return self._insert(rows)

    def _insert(self, rows: Sequence[dict[str, Any]]) -> list[int]:
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


#: What a row's INSERT needs beyond its parameters (SQL text, other columns), generously.
ROW_OVERHEAD_BYTES = 4096


def _within(rows: Sequence[dict[str, Any]], limit: int) -> list[Sequence[dict[str, Any]]]:
    """``rows`` in runs whose INSERT stays under ``limit`` bytes; a row that alone would
    not fit raises :class:`ParametersError` naming its size and the server setting."""
    chunks: list[Sequence[dict[str, Any]]] = []
    start, size = 0, 0
    for k, row in enumerate(rows):
        stored = _escaped_size(row.get("parameters")) + _escaped_size(row.get("parameters_json"))
        row_size = ROW_OVERHEAD_BYTES + stored
        if row_size > limit:
            raise ParametersError(
                f"the parameters of a {row.get('callback_name')!r} job take {stored:,} bytes"
                " in the INSERT, more than the database server accepts in one statement"
                f" (max_allowed_packet = {limit:,} bytes). Store the data elsewhere and pass"
                " its id or path, or raise max_allowed_packet on the server."
            )
        if size + row_size > limit and k > start:
            chunks.append(rows[start:k])
            start, size = k, 0
        size += row_size
    chunks.append(rows[start:])
    return chunks


def _escaped_size(value: str | bytes | None) -> int:
    """How many bytes ``value`` takes as a literal in the statement the driver sends (the
    MySQL drivers quote values client-side, doubling quotes, backslashes and NULs)."""
    if value is None:
        return 0
    if isinstance(value, str):
        size = len(value) if value.isascii() else len(value.encode())
        return size + sum(value.count(c) for c in "\\'\"\0\n\r\x1a")
    return len(value) + sum(value.count(c) for c in b"\\'\"\0\n\r\x1a")
