"""Alembic revisions of the store's schema, oldest first: `0001_baseline` is the schema wgmesh had
before Alembic (its `schema_version` 1; `0002_policy_versions` and `0003_key_rotations` are its 2 and 3); each later file names its `down_revision`."""
