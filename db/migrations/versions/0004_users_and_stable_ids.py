"""users and sign-in, who created what, ids never reused on SQLite, runs keep their dataset's hash

Revision ID: 0004
Revises: 0003

SQLite reuses the largest rowid once its row is deleted, so a new dataset could take the id
of a deleted one and an old run would train on it. The datasets and runs tables are rebuilt
with AUTOINCREMENT (their rows kept), which retires every id ever handed out. PostgreSQL
sequences never reuse ids; there the columns are only added.

runs.dataset_sha256 is filled for existing runs whose dataset is still the one they were
submitted on (created before the run); a run whose dataset id was already reused keeps NULL,
and resuming it is refused.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    rebuild = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}
    with op.batch_alter_table("datasets", **rebuild) as batch:  # type: ignore[arg-type]
        batch.add_column(sa.Column("created_by", sa.String(length=200), nullable=True))
    with op.batch_alter_table("runs", **rebuild) as batch:  # type: ignore[arg-type]
        batch.add_column(sa.Column("created_by", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("dataset_sha256", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE runs SET dataset_sha256 = (SELECT d.sha256 FROM datasets d "
        "WHERE d.id = runs.dataset_id AND d.created_at <= runs.created_at) "
        "WHERE dataset_id IS NOT NULL"
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.CheckConstraint("role IN ('viewer', 'member', 'admin')", name="ck_users_role"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "app_settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("app_settings")
    op.drop_table("users")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("dataset_sha256")
        batch.drop_column("created_by")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("created_by")
