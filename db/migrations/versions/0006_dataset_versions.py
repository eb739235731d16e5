"""datasets have versions: the data doctor's relabels and exclusions make a new dataset row
(its own files) that names the one it was made from; runs keep the version they trained on

Revision ID: 0006
Revises: 0005

Every existing dataset is version 1 with no parent. On SQLite the datasets table is rebuilt
(rows, ids and AUTOINCREMENT kept) to carry the foreign key.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    rebuild = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}
    with op.batch_alter_table("datasets", **rebuild) as batch:  # type: ignore[arg-type]
        batch.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.create_foreign_key(
            "fk_datasets_parent_id", "datasets", ["parent_id"], ["id"], ondelete="SET NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_constraint("fk_datasets_parent_id", type_="foreignkey")
        batch.drop_column("version")
        batch.drop_column("parent_id")
