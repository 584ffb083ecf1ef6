"""The workspace database: SQLite engines, alembic migrations run in code, consistent copies."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.pool import NullPool

from desktop_app.core.errors import WorkspaceError
from runtimes.fileio import fsync_dir

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 15_000


def sqlite_url(db_path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{Path(db_path).resolve()}"


def make_engine(db_path: Path) -> Engine:
    """The engine the app uses: WAL journal, foreign keys on, a busy timeout.

    sqlite3's default transaction handling is kept: a write begins a transaction at its
    first INSERT/UPDATE/DELETE, which commits or rolls back as a whole.
    """
    engine = create_engine(sqlite_url(db_path))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        _set_pragmas(dbapi_conn, foreign_keys=True)

    return engine


def make_migration_engine(db_path: Path) -> Engine:
    """An engine for migrations: fully transactional DDL, foreign keys off while tables change.

    Each transaction starts with ``BEGIN IMMEDIATE``, so two processes opening the same
    workspace migrate one after the other, and a failed migration leaves the old schema.
    """
    engine = create_engine(sqlite_url(db_path), poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see below)
        _set_pragmas(dbapi_conn, foreign_keys=False)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _set_pragmas(dbapi_conn: Any, *, foreign_keys: bool) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
    finally:
        cur.close()


def alembic_config(db_path: Path | None = None, connection: Connection | None = None) -> Config:
    """An alembic ``Config`` built in code (no alembic.ini) for the package's migrations.

    Args:
        db_path: The database to migrate when no connection is given.
        connection: An open SQLAlchemy connection for env.py to run on (preferred).
    """
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if db_path is not None:
        cfg.set_main_option("sqlalchemy.url", sqlite_url(db_path))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this build knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise WorkspaceError("this Outpost build has no database migrations; reinstall Outpost")
    return head


def known_revisions() -> set[str]:
    """Every revision id this build's migrations contain."""
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None for a new or fully downgraded one)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def app_tables(engine: Engine) -> list[str]:
    """The tables in the database other than alembic's version table."""
    with engine.connect() as conn:
        return [t for t in inspect(conn).get_table_names() if t != "alembic_version"]


def run_migration(db_path: Path, target: str = "head", *, downgrade: bool = False) -> None:
    """Upgrade (or downgrade) a database to ``target`` in one transaction.

    Raises:
        WorkspaceError: the migration would leave rows that break a foreign key.
    """
    from alembic import command

    engine = make_migration_engine(db_path)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(connection=conn)
            if downgrade:
                command.downgrade(cfg, target)
            else:
                command.upgrade(cfg, target)
            broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise WorkspaceError(
                    f"migrating {db_path} to {target} would break {len(broken)} foreign keys "
                    f"(first in table {broken[0][0]}); restore a backup from its backups/ folder"
                )
    finally:
        engine.dispose()


def sqlite_copy(src: Path, dest: Path) -> None:
    """Write a consistent copy of a live SQLite database with the sqlite3 backup API.

    The copy is written under a temp name, switched to a self-contained rollback journal,
    synced, and renamed to ``dest``.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_file():
        raise WorkspaceError(f"{src} does not exist; check the workspace path")
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(src, timeout=BUSY_TIMEOUT_MS / 1000)) as s:
            with contextlib.closing(sqlite3.connect(tmp)) as d:
                s.backup(d)
                d.execute("PRAGMA journal_mode=DELETE")
                d.commit()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except sqlite3.Error as exc:
        raise WorkspaceError(
            f"cannot copy {src}: {exc}; close other Outpost windows and retry"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
