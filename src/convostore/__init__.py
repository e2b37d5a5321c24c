"""convostore: AI agents' conversations kept in PostgreSQL.

The public surface is re-exported here; see the README for a tour.
"""

from .cleanup import Sweeper, cleanup_old_sessions
from .errors import (
    AccessDenied,
    ConfigurationError,
    ConvostoreError,
    DatabaseError,
    DuplicateMessageId,
    ImportConflict,
    ImportFileError,
    InvalidIdentifier,
    InvalidIdentifierType,
    InvalidInput,
    InvalidMessage,
    InvalidMessageType,
    InvalidMetadata,
    InvalidMetadataType,
    InvalidType,
    KeyUnavailable,
    MigrationError,
    SchemaNotReady,
    SessionExists,
    SessionNotFound,
    SessionOwnershipError,
    StoreClosed,
    StoreTimeout,
    StoreUnavailable,
)
from .migrations import MIGRATIONS, Migration, MigrationStatus
from .models import AgentStats, Message, NewMessage, Role, Session, SessionCursor, StoreStats, TableSize
from .retry import RetryPolicy
from .store import ErasureReport, PostgresSessionStore
from .transfer import ImportReport, export_jsonl, import_jsonl

__version__ = "0.1.0"

__all__ = [
    "MIGRATIONS",
    "AccessDenied",
    "AgentStats",
    "ConfigurationError",
    "ConvostoreError",
    "DatabaseError",
    "DuplicateMessageId",
    "ErasureReport",
    "ImportConflict",
    "ImportFileError",
    "ImportReport",
    "InvalidIdentifier",
    "InvalidIdentifierType",
    "InvalidInput",
    "InvalidMessage",
    "InvalidMessageType",
    "InvalidMetadata",
    "InvalidMetadataType",
    "InvalidType",
    "KeyUnavailable",
    "Message",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "NewMessage",
    "PostgresSessionStore",
    "RetryPolicy",
    "Role",
    "SchemaNotReady",
    "Session",
    "SessionCursor",
    "SessionExists",
    "SessionNotFound",
    "SessionOwnershipError",
    "StoreClosed",
    "StoreStats",
    "StoreTimeout",
    "StoreUnavailable",
    "Sweeper",
    "TableSize",
    "__version__",
    "cleanup_old_sessions",
    "export_jsonl",
    "import_jsonl",
]
