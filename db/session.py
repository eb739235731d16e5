"""The engine (built once per URL), the session helper and SQLite pragmas.

The schema belongs to Alembic: the first engine built for a URL upgrades that database to the
newest revision, so a new or old database is ready before any query runs. Processes that open
a fresh database at once take turns: a file lock beside a SQLite file, an advisory lock on
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_MIGRATIONS = Path(__file__).parent / "migrations"
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_url: str | None = None


def configure(url: str) -> None:
    """Choose the database that session_scope() opens from now on."""
    global _url
    _url = url


def current_url() -> str:
    if _url is None:
        raise RuntimeError("db.session.configure(url) was not called")
    return _url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # The busy timeout first: switching a fresh file to WAL waits for other openers.
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# Key of the PostgreSQL advisory lock that serialises migrations (any fixed 64-bit number).
_MIGRATION_LOCK = 7_715_001_004


def _sqlite_file(url: str) -> Path | None:
    path = url.split("///", 1)[-1] if url.startswith("sqlite") else ""
    return Path(path) if path and path != ":memory:" else None


# Where Alembic keeps Ascent's schema revision. Releases before it used Alembic's default,
# "alembic_version", the name Optuna's own migrations use in a database shared with them.
VERSION_TABLE = "ascent_alembic_version"
_OLD_VERSION_TABLE = "alembic_version"


def _revisions() -> set[str]:
    return {p.name.split("_", 1)[0] for p in (_MIGRATIONS / "versions").glob("[0-9]*_*.py")}


def _adopt_old_version_table(conn: Any) -> str | None:
    """Move a revision of Ascent's out of "alembic_version" into its own table (a database made
    by an earlier release); one of another schema's (Optuna's) is left alone. Returns the
    revision moved."""
    from sqlalchemy import inspect

    tables = set(inspect(conn).get_table_names())
    if _OLD_VERSION_TABLE not in tables or VERSION_TABLE in tables:
        return None
    rows = [r[0] for r in conn.exec_driver_sql(f"SELECT version_num FROM {_OLD_VERSION_TABLE}")]
    if len(rows) != 1 or rows[0] not in _revisions():
        return None
    conn.exec_driver_sql(
        f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL, "
        f"CONSTRAINT {VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
    )
    conn.exec_driver_sql(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('{rows[0]}')")
    conn.exec_driver_sql(f"DROP TABLE {_OLD_VERSION_TABLE}")
    return str(rows[0])


def upgrade(engine: Engine, *, version_table: str = VERSION_TABLE, to: str = "head") -> None:
    """Bring the database behind `engine` to the newest Alembic revision (or `to`), one process
    at a time. `version_table` other than Ascent's is for tests that build an earlier release's
    database."""
    from alembic import command
    from alembic.config import Config
    from filelock import FileLock

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["version_table"] = version_table
    sqlite = engine.dialect.name == "sqlite"
    file = _sqlite_file(str(engine.url)) if sqlite else None
    lock = FileLock(f"{file}.migrate.lock", timeout=120) if file is not None else contextlib.nullcontext()
    with lock, engine.connect() as conn:
        if sqlite:
            # Rebuilding a table (batch migrations) drops the old one; with foreign keys on,
            # that would cascade into every row that points at it. Off outside a transaction.
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
        try:
            with conn.begin():
                if engine.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
                if version_table == VERSION_TABLE:
                    _adopt_old_version_table(conn)
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, to)
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"the migration left rows pointing nowhere: {broken[:5]}")
        finally:
            if sqlite:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()


def engine(url: str | None = None) -> Engine:
    """The engine for `url` (default: the configured one), created and upgraded once."""
    url = url or current_url()
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            if url.startswith("sqlite"):
                file = _sqlite_file(url)
                if file is not None:
                    file.parent.mkdir(parents=True, exist_ok=True)
                eng = create_engine(url, connect_args={"timeout": 30})
                event.listen(eng, "connect", _sqlite_pragmas)
            else:
                eng = create_engine(url, pool_pre_ping=True)
            upgrade(eng)
            _engines[url] = eng
        return eng


def dispose_all() -> None:
    """Close every pooled connection (tests, and a child process after fork)."""
    with _lock:
        for eng in _engines.values():
            eng.dispose()
        _engines.clear()


T = TypeVar("T")


def retrying(work: Callable[[], T], *, for_s: float, what: str = "database call") -> T:
    """`work()`, tried again while the database is unreachable (a restart, a dropped
    connection, SQLite's lock held too long) for up to `for_s` seconds, then the last error.

    Only for idempotent work or work whose transaction was rolled back with the error."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    deadline = time.monotonic() + for_s
    pause = 0.2
    while True:
        try:
            return work()
        except DBAPIError as exc:
            transient = isinstance(exc, OperationalError) or exc.connection_invalidated
            if not transient or time.monotonic() + pause > deadline:
                raise
            print(
                f"{what}: the database is unreachable ({type(exc.orig).__name__}); retrying",
                file=sys.stderr,
                flush=True,
            )
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success, rolls back on error and always closes."""
    factory = sessionmaker(bind=engine(url), expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
