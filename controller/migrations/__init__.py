"""The store's schema history as Alembic revisions, one file per step in `versions/`, applied by
`controller.sqlstore.SqlStore` at start-up (see its docstring for how to add one)."""
