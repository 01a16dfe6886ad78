"""Alembic environment of the feedback database: ``FeedbackStore`` passes its open connection (already
inside the transaction that holds the write lock) as ``config.attributes["connection"]``."""
from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the feedback migrations run when FeedbackStore opens a database (python -m serve "
                       "--feedback-db URL); they take no alembic command line")
# transactional_ddl: SQLite's DDL is transactional too (alembic assumes not by default). The caller's
# transaction is the one that commits: alembic does not commit an external transaction.
context.configure(connection=connection, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
