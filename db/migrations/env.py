"""Alembic environment: runs on the connection db.session.upgrade() hands over, or on a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from db.models import Base
from db.session import VERSION_TABLE

config = context.config
target_metadata = Base.metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        # Ascent's own table: Optuna's studies, kept in the same database, have an "alembic_version".
        version_table=config.attributes.get("version_table", VERSION_TABLE),
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url (alembic -x) or pass a connection")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()
