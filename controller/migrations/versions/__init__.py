"""Alembic revisions of the store's schema, oldest first: `0001_baseline` is the schema wgmesh had
before Alembic (its `schema_version` 1; `0002_policy_versions` is its 2); each later file names its `down_revision`."""
