"""Alembic environment for the workspace database.

Run in code, never from an alembic.ini: ``desktop_app.core.workspace_db.alembic_config()``
builds the config and passes an open connection in ``config.attributes["connection"]``.
Logging is left as the application configured it (no ``fileConfig``).

To write a new revision after changing ``models.py``::

    from alembic import command
    from desktop_app.core.workspace_db import alembic_config
    command.revision(alembic_config(db_path), message="...", autogenerate=True, rev_id="0002")

against a database upgraded to the current head, then read and correct the result.
"""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import Connection

from desktop_app.core.models import Base

config = context.config
target_metadata = Base.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things; batch mode rebuilds tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from desktop_app.core.workspace_db import make_migration_engine

    url = config.get_main_option("sqlalchemy.url") or ""
    if not url.startswith("sqlite:///"):
        raise RuntimeError("set sqlalchemy.url to the workspace's sqlite:/// database")
    engine = make_migration_engine(Path(url.removeprefix("sqlite:///")))
    try:
        with engine.begin() as conn:
            _configure_and_run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
