"""Schema v1: served answers (``responses``), feedback about them (``feedback``), and ``meta``.

The tables Keel created before it used alembic; an existing v1 database is stamped with this revision.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

from serve.feedback_migrations import set_schema_version

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Seconds since the epoch: REAL in SQLite (as before alembic), DOUBLE PRECISION in PostgreSQL.
TIMESTAMP = sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    """Create schema 1: the meta, responses and feedback tables with their indexes."""
    op.create_table("meta", sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "responses",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("session_id", sa.Text, nullable=False),
        sa.Column("checkpoint_id", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("context_hash", sa.Text, nullable=False),
        sa.Column("prompt_json", sa.Text, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("trace_json", sa.Text),
    )
    op.create_index("responses_context", "responses", ["session_id", "context_hash"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("response_id", sa.Text, sa.ForeignKey("responses.id")),
        sa.Column("session_id", sa.Text, nullable=False),
        sa.Column("checkpoint_id", sa.Text, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("context_hash", sa.Text, nullable=False),
        sa.Column("prompt_json", sa.Text, nullable=False),
        sa.Column("completion", sa.Text, nullable=False),
        sa.Column("label", sa.Integer),
        sa.Column("edited", sa.Text),
        sa.Column("comment", sa.Text),
        sa.Column("conversation_json", sa.Text, nullable=False),
        sa.CheckConstraint("kind IN ('rating', 'edit', 'regenerate', 'comment')", name="feedback_kind_check"),
        sqlite_autoincrement=True,  # ids are never reused, as before alembic
    )
    op.create_index("feedback_kind", "feedback", ["kind", "session_id"])
    set_schema_version(op.get_bind(), 1)


def downgrade() -> None:
    """Not supported: raises NotImplementedError (restore a backup instead)."""
    raise NotImplementedError("feedback databases are not migrated down; restore a backup")
