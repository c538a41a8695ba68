"""The domain: tables, the unit of work, identity normalization and tenant-scoped queries.

It imports nothing else of ours, so every other package may build on it.
"""
