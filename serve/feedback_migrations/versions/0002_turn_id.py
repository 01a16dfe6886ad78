"""Schema v2: ``responses.turn_id``, the turn a (regenerated) answer belongs to.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from serve.feedback_migrations import set_schema_version

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Schema 2: ``responses.turn_id``, which pairs a regenerated answer with the one it replaced."""
    op.add_column("responses", sa.Column("turn_id", sa.Text))
    set_schema_version(op.get_bind(), 2)


def downgrade() -> None:
    """Not supported: raises NotImplementedError (restore a backup instead)."""
    raise NotImplementedError("feedback databases are not migrated down; restore a backup")
