"""Core statements compiled once per dialect and run on the driver's own cursor.

SQLAlchemy's execution of a statement costs several times what the driver needs to run it on
SQLite: the cache key, the parameters' processing, the execution context and the result
object, about 100 µs a statement against sqlite3's 10 (``python -m bench.processing``).
Processing records every message with a handful of statements, so those few run here: each is
compiled once per dialect by SQLAlchemy, so SQLite and PostgreSQL each get their own SQL and
parameter style and the models' Python-side defaults and column types still apply, then run
with ``cursor.execute`` / ``executemany`` on the DBAPI connection of the caller's
transaction. The driver prepares the text once per connection (sqlite3's statement cache,
psycopg's automatic prepare after a few runs).

Errors come back as SQLAlchemy's (``IntegrityError``, ``OperationalError``…), which is what
callers handle.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, Engine, Executable
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

from mailledger.store.models import UTCDateTime

Params = Mapping[str, Any]
Row = tuple[Any, ...]
_Process = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Bind:
    """Where one placeholder of the SQL takes its value from."""

    name: str  # the placeholder's name in the SQL
    key: str  # the caller's parameter
    index: int = -1  # for an expanded list, the item (padded lists repeat their last)
    process: _Process | None = None  # the column type's conversion for the driver
    default: Callable[[], Any] | None = None  # a column's default, when the caller gives none
    own: Any = None  # the statement's own value (LIMIT 1), when the caller gives none
    required: bool = False  # the caller must give it: it has no value of its own


# How a placeholder takes its value (``_Compiled.plan``): the caller's, the caller's or the
# statement's own, a column default, or an item of an expanded list.
_GIVEN, _OR_OWN, _DEFAULT, _ITEM = range(4)


def _plan(bind: _Bind) -> tuple[int, str, Any, _Process | None]:
    if bind.default is not None:
        return (_DEFAULT, bind.key, bind.default, bind.process)
    if bind.index >= 0:
        return (_ITEM, bind.key, bind.index, bind.process)
    if bind.required:
        return (_GIVEN, bind.key, None, bind.process)
    return (_OR_OWN, bind.key, bind.own, bind.process)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One statement's SQL for one dialect (and parameter keys, and list lengths)."""

    sql: str
    binds: tuple[_Bind, ...]
    positional: bool
    results: tuple[_Process | None, ...] | None  # None: every column as the driver gives it
    # The binds as plain tuples: ``values`` runs for every row a transaction writes, and
    # unpacking a tuple costs less than reading a dataclass's fields one by one.
    plan: tuple[tuple[int, str, Any, _Process | None], ...] = ()

    def values(self, params: Params) -> Sequence[Any] | dict[str, Any]:
        """The parameters as the driver takes them: a tuple (qmark) or a dict (pyformat)."""
        values = []
        for how, key, arg, process in self.plan:
            if how == _GIVEN:
                value = params[key]
            elif how == _OR_OWN:
                value = params.get(key, arg)
            elif how == _DEFAULT:
                value = arg()
            else:
                items = params[key]
                value = items[min(arg, len(items) - 1)]
            values.append(value if process is None else process(value))
        if self.positional:
            return values
        return {bind.name: value for bind, value in zip(self.binds, values, strict=True)}

    def rows(self, rows: list[Row]) -> list[Row]:
        """Result rows with each column's type applied (SQLite's timestamps, enums, JSON)."""
        if self.results is None:
            return rows
        processes = self.results
        return [
            tuple(v if p is None else p(v) for p, v in zip(processes, row, strict=True))
            for row in rows
        ]


class Statement:
    """A Core statement, compiled once per dialect and run on the DBAPI cursor.

    An insert or update sets the columns named by its parameters' keys (as SQLAlchemy's
    ``execute`` does); each other column with a Python-side default gets it. An expanding
    ``IN`` parameter is compiled per list length, padded to a power of two (repeating the last
    item) so a few texts serve every length.
    """

    def __init__(self, statement: Executable) -> None:
        self._statement = statement
        self._dml = bool(getattr(statement, "is_dml", False))
        self._expanding = tuple(
            sorted(
                {
                    node.key
                    for node in visitors.iterate(statement)  # type: ignore[arg-type]
                    if isinstance(node, BindParameter) and node.expanding
                }
            )
        )
        self._compiled: dict[tuple[Any, ...], _Compiled] = {}

    def compiled(self, dialect: Dialect, params: Params) -> _Compiled:
        """The statement's SQL for the dialect and these parameters, compiled once."""
        keys = tuple(params) if self._dml else ()
        lengths = tuple(_padded(len(params[name])) for name in self._expanding)
        key = (dialect, keys, lengths)
        found = self._compiled.get(key)
        if found is None:
            lists = dict(zip(self._expanding, lengths, strict=True))
            found = self._compiled[key] = self._compile(dialect, keys, lists)
        return found

    def _compile(
        self, dialect: Dialect, keys: tuple[str, ...], lengths: dict[str, int]
    ) -> _Compiled:
        statement: Any = self._statement
        options: dict[str, Any] = {}
        required = _required(statement, dialect)
        if lengths:
            # Render the lists' placeholders now; every other parameter stays a placeholder.
            statement = statement.params(
                dict.fromkeys(required) | {n: [None] * k for n, k in lengths.items()}
            )
            options["compile_kwargs"] = {"render_postcompile": True}
        if self._dml:
            options["column_keys"] = list(keys)
            # No implicit RETURNING of the new row's key (PostgreSQL): nobody reads it.
            options["for_executemany"] = not getattr(statement, "_returning", ())
        compiled = statement.compile(dialect=dialect, **options)
        assert isinstance(compiled, SQLCompiler)
        if compiled.escaped_bind_names:
            raise ValueError(f"parameter names that need escaping: {compiled.escaped_bind_names}")
        defaults = {column.key: column.default for column in compiled.insert_prefetch} | {
            column.key: column.onupdate for column in compiled.update_prefetch
        }
        binds: dict[str, _Bind] = {}
        for bind, name in compiled.bind_names.items():
            process = _bind_processor(bind.type, dialect)
            if bind.expanding:
                for index in range(lengths[bind.key]):
                    item = f"{name}_{index + 1}"
                    binds[item] = _Bind(item, bind.key, index, process)
            elif name in defaults and name not in keys:
                binds[name] = _Bind(name, name, process=process, default=_default(defaults[name]))
            else:
                # A column an insert or update sets is required in every row, as in SQLAlchemy.
                must = bind.key in required or name in keys
                own = None if must else bind.value
                binds[name] = _Bind(name, bind.key, process=process, own=own, required=must)
        order = compiled.positiontup
        positional = order is not None
        ordered = tuple(binds[name] for name in order or binds)
        columns = getattr(self._statement, "exported_columns", ())
        processes = tuple(
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        )
        results = processes if any(p is not None for p in processes) else None
        plan = tuple(_plan(bind) for bind in ordered)
        return _Compiled(compiled.string, ordered, positional, results, plan)


def _bind_processor(type_: TypeEngine[Any], dialect: Dialect) -> _Process | None:
    """The column type's conversion of a parameter for the driver.

    A timestamp on SQLite is stored as text, and SQLAlchemy's conversion (our time-zone check,
    then a ``%`` format of a dict of its fields) was the costliest step of binding a
    processing transaction's rows. The same format of a tuple writes the same text faster.
    """
    impl = type_.dialect_impl(dialect)
    process = impl.bind_processor(dialect)
    stored = getattr(impl, "impl", None)  # the decorated type, as the dialect has it
    if (
        process is not None
        and isinstance(type_, UTCDateTime)
        and type(stored) is sqlite.DATETIME
        and stored._storage_format == sqlite.DATETIME._storage_format
    ):
        return _sqlite_timestamp(process)
    return process


# SQLAlchemy's storage format for SQLite's DATETIME, with positional fields.
_SQLITE_TIMESTAMP = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def _sqlite_timestamp(checked: _Process) -> _Process:
    """SQLite's stored text of an aware timestamp: its own fields, without the offset.

    Exactly SQLAlchemy's ``YYYY-MM-DD HH:MM:SS.ffffff`` of a UTC time; anything else (None,
    a naive time, which is refused, another offset, turned to UTC) goes through the column
    type's own conversion.
    """

    def process(value: Any) -> Any:
        if value is None:
            return None
        if value.__class__ is datetime and value.tzinfo is not None and not value.utcoffset():
            return _SQLITE_TIMESTAMP % (
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
        return checked(value)

    return process


def _padded(length: int) -> int:
    if length == 0:
        raise ValueError("an empty list for an IN parameter")
    return 1 << (length - 1).bit_length()


def _required(statement: Any, dialect: Dialect) -> set[str]:
    """The statement's parameters without a value of their own."""
    compiled = statement.compile(dialect=dialect)
    return {bind.key for bind in compiled.bind_names if bind.required and not bind.expanding}


def _default(default: Any) -> Callable[[], Any]:
    """A column default as a function of nothing (SQLAlchemy's take an execution context)."""
    if default.is_callable:
        function = default.arg
        return lambda: function(None)
    value = default.arg
    return lambda: value


class Cursor:
    """The driver's cursor on the connection of a session's transaction.

    Statements run here are in that transaction, beside what the session runs; the cursor is
    for one transaction (``close`` it, or use ``with``).
    """

    def __init__(self, connection: Connection) -> None:
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None
        self._open(connection.dialect, dbapi_connection)

    def _open(self, dialect: Dialect, dbapi_connection: Any) -> None:
        self._dialect = dialect
        self._dbapi_error = dialect.loaded_dbapi.Error
        self._cursor = dbapi_connection.cursor()
        self._savepoints = itertools.count(1)

    @classmethod
    @contextlib.contextmanager
    def reading(cls, engine: Engine) -> Iterator[Cursor]:
        """A cursor on a pooled connection with no transaction begun by us, for a read that is
        one statement (one statement sees one snapshot of the database).

        No session, no ``BEGIN``: a lookup on a busy path (each RCPT) cost more in
        SQLAlchemy's session and transaction than in its query. On SQLite it is a reader, so
        it never waits for the write lock; on PostgreSQL the driver's implicit transaction is
        rolled back when the connection goes back to the pool.
        """
        raw = engine.raw_connection()
        try:
            cursor = cls.__new__(cls)
            cursor._open(engine.dialect, raw.dbapi_connection)
            try:
                yield cursor
            finally:
                cursor.close()
        finally:
            raw.close()

    @property
    def dialect_name(self) -> str:
        """``sqlite`` or ``postgresql``: for statements written per dialect (an upsert)."""
        return str(self._dialect.name)

    @classmethod
    def of(cls, session: Session) -> Cursor:
        """The cursor of the session's transaction (begun now, if it was not yet)."""
        return cls(session.connection())

    def __enter__(self) -> Cursor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let the driver free the cursor."""
        self._cursor.close()

    def rows(self, statement: Statement, params: Params) -> list[Row]:
        """The rows the statement returns."""
        compiled = statement.compiled(self._dialect, params)
        self._execute(compiled.sql, compiled.values(params))
        return compiled.rows([tuple(row) for row in self._cursor.fetchall()])

    def scalar(self, statement: Statement, params: Params) -> Any:
        """The first column of the first row, or None when there is no row."""
        rows = self.rows(statement, params)
        return rows[0][0] if rows else None

    def run(self, statement: Statement, params: Params) -> int:
        """Run a statement that returns no rows; how many rows it changed."""
        compiled = statement.compiled(self._dialect, params)
        self._execute(compiled.sql, compiled.values(params))
        return int(self._cursor.rowcount)

    def many(self, statement: Statement, rows: Sequence[Params]) -> None:
        """Run the statement once per row of parameters, in one driver call (``executemany``)."""
        if not rows:
            return
        compiled = statement.compiled(self._dialect, rows[0])
        values: Any = [compiled.values(row) for row in rows]
        try:
            self._cursor.executemany(compiled.sql, values)
        except self._dbapi_error as exc:
            raise self._translated(compiled.sql, values, exc) from exc

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[None]:
        """Work that is rolled back alone if it raises; the exception goes on."""
        name = f"mailledger_{next(self._savepoints)}"
        self._execute(f"SAVEPOINT {name}", ())
        try:
            yield
        except BaseException:
            self._execute(f"ROLLBACK TO SAVEPOINT {name}", ())
            self._execute(f"RELEASE SAVEPOINT {name}", ())
            raise
        self._execute(f"RELEASE SAVEPOINT {name}", ())

    def _execute(self, sql: str, values: Any) -> None:
        try:
            self._cursor.execute(sql, values)
        except self._dbapi_error as exc:
            raise self._translated(sql, values, exc) from exc

    def _translated(self, sql: str, values: Any, exc: Exception) -> StatementError:
        """The driver's error as SQLAlchemy raises it: the callers' handlers expect those."""
        return DBAPIError.instance(sql, values, exc, self._dbapi_error, dialect=self._dialect)
