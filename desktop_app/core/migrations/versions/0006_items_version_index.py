"""Drop the plain index on ``dataset_items.version_id``: the unique index on
``(version_id, file_name)`` already serves every lookup by version (its first column), and
each of a version's rows paid for the second index when it was written.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_dataset_items_version_id", table_name="dataset_items")


def downgrade() -> None:
    op.create_index("ix_dataset_items_version_id", "dataset_items", ["version_id"], unique=False)
