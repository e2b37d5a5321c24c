"""What a failed statement means, and what the caller is told: driver errors classified once,
on asyncpg's exception classes, and translated into convostore's hierarchy with the cause
kept and passwords scrubbed."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ._types import Connection
from .errors import (
    AccessDenied,
    BranchNotFound,
    ConvostoreError,
    DatabaseError,
    DuplicateMessageId,
    InvalidInput,
    SchemaNotReady,
    SessionNotFound,
    StoreTimeout,
    StoreUnavailable,
)

_SECRET_KEYS = frozenset({"password", "sslpassword"})


def redact(url: str) -> str:
    """*url* with every password (``user:pw@`` or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    if any(k in _SECRET_KEYS for k, _ in query):
        query_text = urlencode([(k, "***" if k in _SECRET_KEYS else v) for k, v in query], safe="*/")
    else:
        query_text = parts.query
    return urlunsplit(parts._replace(netloc=netloc, query=query_text))


def secrets_of(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [v for k, v in parse_qsl(parts.query) if k in _SECRET_KEYS and v]
        if parts.password:
            found.append(parts.password)
    except ValueError:
        return []
    return found


def describe(exc: BaseException) -> str:
    """``Type: message``, or just the type when the message is blank (``TimeoutError()``)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Failure(enum.Enum):
    """What a failed attempt tells about the statement it carried."""

    NOT_SENT = "not sent"  # no connection: nothing reached the server
    ROLLED_BACK = "rolled back"  # the server rolled it back (serialization failure, deadlock)
    CONNECTION_LOST = "connection lost"  # it may or may not have committed
    TIMED_OUT = "timed out"  # ran past its time: the caller's deadline, not retried
    STATEMENT = "statement"  # the statement itself was refused: never retried


_CONNECT_REFUSED = (
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.TooManyConnectionsError,  # 53300
    asyncpg.ConfigurationLimitExceededError,  # 53400
    asyncpg.exceptions.ConnectionRejectionError,  # 08004
    asyncpg.exceptions.ClientCannotConnectError,  # 08001
)
_SERVER_WENT_AWAY = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,
    asyncpg.InternalClientError,  # the connection was left mid-protocol
    OSError,
)


def classify(exc: BaseException, conn: Connection | None = None) -> Failure:
    """Classify *exc*, raised by an attempt that ran on *conn* (``None``: before a connection
    was had). Decided by exception class; an ``InterfaceError`` counts as the connection's
    failure only when the connection is in fact closed."""
    if conn is None:
        # No connection yet (opening the pool, connecting, waiting for a free connection):
        # whatever went wrong, nothing was sent.
        if isinstance(exc, (*_CONNECT_REFUSED, *_SERVER_WENT_AWAY, asyncpg.InterfaceError, asyncio.TimeoutError)):
            return Failure.NOT_SENT
        return Failure.STATEMENT
    if isinstance(exc, (asyncio.TimeoutError, asyncpg.QueryCanceledError)):
        return Failure.TIMED_OUT
    if isinstance(exc, asyncpg.TransactionRollbackError):
        return Failure.ROLLED_BACK
    if isinstance(exc, _SERVER_WENT_AWAY):
        return Failure.CONNECTION_LOST
    if isinstance(exc, asyncpg.InterfaceError) and is_closed(conn):
        return Failure.CONNECTION_LOST
    return Failure.STATEMENT


def is_closed(conn: Connection) -> bool:
    """Whether *conn* is closed, or already detached from its pool (asyncpg releases a pooled
    connection itself when the server goes away)."""
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def translate(
    exc: BaseException, what: str, failure: Failure, scrub: Callable[[str], str], url: str | None = None
) -> ConvostoreError:
    """Our error for a driver error (the caller raises it ``from exc``); *scrub* removes
    passwords from the text, *url* names the server when no connection could be had."""
    if failure is Failure.TIMED_OUT:
        return StoreTimeout(f"{what}: timed out ({describe(exc)})")
    if failure is Failure.NOT_SENT:
        where = redact(url) if url else "the database"
        if isinstance(exc, asyncio.TimeoutError):
            return StoreUnavailable(scrub(f"cannot connect to {where}: no connection could be opened or freed in time"))
        return StoreUnavailable(scrub(f"cannot connect to {where}: {describe(exc)}"))
    if failure is not Failure.STATEMENT:
        return StoreUnavailable(scrub(f"{what}: {failure.value}: {describe(exc)}"))
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        return SessionNotFound(f"{what}: the session does not exist")
    if isinstance(exc, asyncpg.UniqueViolationError):
        return DuplicateMessageId(f"{what}: an id is already taken ({exc.constraint_name})")
    if isinstance(exc, asyncpg.CheckViolationError):
        return InvalidInput(f"{what}: rejected by the schema ({exc.constraint_name})")
    if isinstance(exc, asyncpg.DataError):  # class 22: too long, bad encoding, out of range...
        return InvalidInput(f"{what}: {exc}")
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):  # 42501: privileges, or row-level security
        return AccessDenied(f"{what}: the database role may not do this ({exc})")
    if isinstance(exc, (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.UndefinedFunctionError)):
        return SchemaNotReady(f"{what}: the schema is missing or not migrated ({exc}); run `convostore migrate`")
    if isinstance(exc, asyncpg.NoDataFoundError):  # P0002: our functions' "no such branch"
        return BranchNotFound(f"{what}: {exc.args[0] if exc.args else exc}")
    return DatabaseError(scrub(f"{what}: {describe(exc)}"))
