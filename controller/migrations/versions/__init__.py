"""Alembic revisions of the store's schema, oldest first: `0001_baseline` is the schema wgmesh had
before Alembic (its `schema_version` 1); each later file names its `down_revision`."""
