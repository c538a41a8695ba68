"""The ingestion side: accept, queue, the per-tenant drain that upserts contacts, and its upkeep."""
