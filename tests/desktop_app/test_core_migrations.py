from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from desktop_app.core.models import Base
from desktop_app.core.workspace import Workspace
from desktop_app.core.workspace_db import head_revision, known_revisions, run_migration


def _diff(ws: Workspace) -> list[object]:
    with ws.engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return list(compare_metadata(ctx, Base.metadata))


def test_migrated_database_matches_the_models(ws: Workspace) -> None:
    assert ws.revision() == head_revision()
    assert _diff(ws) == []


def test_downgrade_and_upgrade_round_trip(ws: Workspace) -> None:
    ws.close()
    run_migration(ws.db_path, "base", downgrade=True)
    run_migration(ws.db_path, "head")
    again = Workspace.open(ws.root)
    try:
        assert _diff(again) == []
    finally:
        again.close()


def test_revisions_form_a_single_line() -> None:
    assert head_revision() in known_revisions()
