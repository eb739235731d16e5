"""runs may end "pruned": a sweep's trial its pruner stopped early

Revision ID: 0005
Revises: 0004

The status check constraint gains the new value. SQLite cannot alter a constraint, so there
the runs table is rebuilt (its rows, ids and AUTOINCREMENT kept).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost')"
NEW = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost', 'pruned')"


def _swap(check: str) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    rebuild = {"recreate": "always", "table_kwargs": {"sqlite_autoincrement": True}} if sqlite else {}
    with op.batch_alter_table("runs", **rebuild) as batch:  # type: ignore[arg-type]
        batch.drop_constraint("ck_runs_status", type_="check")
        batch.create_check_constraint("ck_runs_status", check)


def upgrade() -> None:
    _swap(NEW)


def downgrade() -> None:
    op.execute("UPDATE runs SET status = 'cancelled' WHERE status = 'pruned'")
    _swap(OLD)
