"""Alembic's entry point: runs the migrations on the URL that models.migrate put in the config."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from models.schema import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
assert url, "models.migrate.alembic_config sets the URL"

connectable = create_engine(url, poolclass=pool.NullPool)
with connectable.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
