"""Dataset drafts, tags, undoable edits, split settings, test fraction and import problems.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("split_settings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("test_fraction", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("problems", sa.JSON(), nullable=False, server_default="[]"))
        batch.add_column(
            sa.Column("origin", sa.String(length=16), nullable=False, server_default="import")
        )
        batch.add_column(sa.Column("message", sa.Text(), nullable=True))
    op.create_table(
        "dataset_tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["dataset_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "tag"),
    )
    op.create_index("ix_dataset_tags_dataset_id", "dataset_tags", ["dataset_id"])
    op.create_index("ix_dataset_tags_version_id", "dataset_tags", ["version_id"])
    op.create_table(
        "annotation_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=32), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("undone", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_annotation_edits_dataset_id", "annotation_edits", ["dataset_id"])


def downgrade() -> None:
    op.drop_index("ix_annotation_edits_dataset_id", table_name="annotation_edits")
    op.drop_table("annotation_edits")
    op.drop_index("ix_dataset_tags_version_id", table_name="dataset_tags")
    op.drop_index("ix_dataset_tags_dataset_id", table_name="dataset_tags")
    op.drop_table("dataset_tags")
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_column("message")
        batch.drop_column("origin")
        batch.drop_column("problems")
        batch.drop_column("test_fraction")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("split_settings")
