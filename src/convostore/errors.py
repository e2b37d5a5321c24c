"""The convostore exception hierarchy.

Every error the library raises on purpose derives from :class:`ConvostoreError`.
Misuse errors also derive from the matching built-in (``ValueError``, ``LookupError``)
so existing ``except`` clauses keep working. Driver errors are wrapped with
``raise ... from exc``: the cause stays on ``__cause__``.
"""

from __future__ import annotations


class ConvostoreError(Exception):
    """Base class of every error raised by convostore."""


class ConfigurationError(ConvostoreError, ValueError):
    """The store was configured with an invalid option."""


class InvalidInput(ConvostoreError, ValueError):
    """An argument was rejected before anything was written."""


class InvalidType(InvalidInput, TypeError):
    """An argument has the wrong type (also a ``TypeError``): a non-string id, a value JSON
    cannot hold, an unknown setting."""


class InvalidIdentifier(InvalidInput):
    """A session, user, agent, message or tool-call id is empty, too long or malformed."""


class InvalidIdentifierType(InvalidIdentifier, InvalidType):
    """An id is not a string."""


class InvalidMessage(InvalidInput):
    """A message has an unknown role, non-text content or non-JSON tool calls."""


class InvalidMessageType(InvalidMessage, InvalidType):
    """A message, or one of its fields, has a type that cannot be stored."""


class InvalidMetadata(InvalidInput):
    """Session metadata is not a JSON object of serialisable values."""


class InvalidMetadataType(InvalidMetadata, InvalidType):
    """Session metadata is not a mapping, or holds a value JSON cannot hold."""


class ImportFileError(InvalidInput):
    """A line of an import file is malformed; nothing was imported."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line


class ImportIncomplete(ImportFileError):
    """An import file ends before its export's end line (it was cut short); nothing was imported."""


class ImportChecksumMismatch(ImportFileError):
    """An import file's lines disagree with its end line's counts or checksum; nothing was imported."""


class SessionNotFound(ConvostoreError, LookupError):
    """The session does not exist (or was deleted)."""


class BranchNotFound(ConvostoreError, LookupError):
    """The session has no such branch (or it was deleted)."""


class BranchExists(ConvostoreError, ValueError):
    """A fork was given the name of a branch the session already has."""


class BranchConflict(ConvostoreError, ValueError):
    """The change would take a message away from another branch that shares it (a pop of a
    message a branch was forked at or after)."""


class AccessDenied(ConvostoreError, PermissionError):
    """Not allowed: the database role lacks the privilege, row-level security refused a row
    outside the call's scope, or the call reaches beyond its view's scope."""


class SessionOwnershipError(AccessDenied):
    """The session exists but belongs to another user."""


class SessionExists(ConvostoreError, ValueError):
    """``create_session`` was given the id of a session that already exists."""


class ImportConflict(ConvostoreError):
    """An import file disagrees with what is stored (another owner, or other content under
    the same ids); nothing was imported. ``conflicts`` lists them as ``(line, reason)``."""

    def __init__(self, conflicts: list[tuple[int, str]]) -> None:
        first = "; ".join(f"line {line}: {reason}" for line, reason in conflicts[:3])
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        super().__init__(f"{len(conflicts)} conflicting rows, nothing was imported: {first}{more}")
        self.conflicts = conflicts


class DuplicateMessageId(ConvostoreError, ValueError):
    """A message id was reused in the same session for a different message."""


class StoreClosed(ConvostoreError, RuntimeError):
    """The store is not connected (call ``connect()`` or use ``async with``)."""


class KeyUnavailable(ConvostoreError):
    """A sealed message cannot be opened: its master key is not configured, or the row was
    tampered with (or copied from another row)."""


class TamperedMessage(KeyUnavailable):
    """A sealed message does not open with its key: its sealed value, role, tool-call id or
    branch was changed, or its sealed value was copied from another row."""


class EncryptionRequired(ConvostoreError):
    """The tenant's messages are sealed and this store has no encryption keys: it refuses to
    append plaintext there."""


class MigrationError(ConvostoreError):
    """A schema migration failed or the schema is newer than this library."""


class SchemaNotReady(MigrationError):
    """The schema does not exist, or has migrations pending, and the caller did not ask to
    migrate (run ``convostore migrate``)."""


class StoreUnavailable(ConvostoreError, ConnectionError):
    """The database could not be reached, or kept failing, within the retry policy."""


class StoreTimeout(StoreUnavailable, TimeoutError):
    """A call did not finish within its deadline."""


class DatabaseError(ConvostoreError):
    """The database refused an operation for a reason that is not the caller's input."""


class RoleConflict(ConvostoreError, ValueError):
    """``create_roles`` would change a role that already exists (its attributes, or privileges
    it does not hold yet); ``changes`` says how. Nothing was changed: pass ``force=True``."""

    def __init__(self, message: str, changes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.changes = changes


__all__ = [
    "AccessDenied",
    "ConfigurationError",
    "ConvostoreError",
    "DatabaseError",
    "DuplicateMessageId",
    "EncryptionRequired",
    "ImportChecksumMismatch",
    "ImportConflict",
    "ImportFileError",
    "ImportIncomplete",
    "InvalidIdentifier",
    "InvalidIdentifierType",
    "InvalidInput",
    "InvalidMessage",
    "InvalidMessageType",
    "InvalidMetadata",
    "InvalidMetadataType",
    "InvalidType",
    "KeyUnavailable",
    "MigrationError",
    "RoleConflict",
    "SchemaNotReady",
    "SessionExists",
    "SessionNotFound",
    "SessionOwnershipError",
    "StoreClosed",
    "StoreTimeout",
    "StoreUnavailable",
    "TamperedMessage",
]
