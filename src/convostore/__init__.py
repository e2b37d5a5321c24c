"""convostore: AI agents' conversations kept in PostgreSQL.

The public surface is re-exported here; see the README for a tour.
"""

from .cleanup import Sweeper, cleanup_old_sessions
from .errors import (
    ConfigurationError,
    ConvostoreError,
    DatabaseError,
    DuplicateMessageId,
    InvalidIdentifier,
    InvalidInput,
    InvalidMessage,
    InvalidMetadata,
    MigrationError,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
    StoreTimeout,
    StoreUnavailable,
)
from .migrations import MIGRATIONS, Migration, MigrationStatus
from .models import Message, NewMessage, Role, Session, SessionCursor
from .retry import RetryPolicy
from .store import ErasureReport, PostgresSessionStore

__version__ = "0.1.0"

__all__ = [
    "MIGRATIONS",
    "ConfigurationError",
    "ConvostoreError",
    "DatabaseError",
    "DuplicateMessageId",
    "ErasureReport",
    "InvalidIdentifier",
    "InvalidInput",
    "InvalidMessage",
    "InvalidMetadata",
    "Message",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "NewMessage",
    "PostgresSessionStore",
    "RetryPolicy",
    "Role",
    "Session",
    "SessionCursor",
    "SessionNotFound",
    "SessionOwnershipError",
    "StoreClosed",
    "StoreTimeout",
    "StoreUnavailable",
    "Sweeper",
    "__version__",
    "cleanup_old_sessions",
]
