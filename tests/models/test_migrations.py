"""The migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from models.db import Database
from models.schema import Base

# Made by the migration alone: PostgreSQL's trigram indexes have no portable model form.
MIGRATION_ONLY = {"ix_contacts_name_trgm", "ix_contacts_email_trgm", "ix_contacts_phone_trgm"}


def _include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return not (type_ == "index" and name in MIGRATION_ONLY)


def test_migrated_schema_matches_the_models(db: Database) -> None:
    """`alembic upgrade head` leaves nothing for autogenerate to add, drop or change."""
    with db.engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_object": _include, "compare_type": True}
        )
        assert compare_metadata(context, Base.metadata) == []
