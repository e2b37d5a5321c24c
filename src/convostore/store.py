"""``PostgresSessionStore``: sessions and their messages in PostgreSQL.

The store is the API, a facade: each method checks nothing and does nothing itself but hand
its arguments to the module of its concern (:mod:`~convostore._sessions`,
:mod:`~convostore._messages`, :mod:`~convostore._branches`, :mod:`~convostore._compaction`,
:mod:`~convostore._search`, :mod:`~convostore._state`, :mod:`~convostore._usage`,
:mod:`~convostore._retention`, :mod:`~convostore._stats`, :mod:`~convostore._rekey`) with the
view's :class:`~convostore._scope.Scope`: its tenant, user and actor, and the
:class:`~convostore._runner.Runner` its statements run through, which owns the pools (one
per event loop), the attempts within each call's deadline and the error classification. The
store is usable at once: the first call in an event loop opens that loop's pool (and, the
first time, migrates or checks the schema: :mod:`~convostore._schema`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self

import asyncpg

from . import (
    _branches,
    _compaction,
    _messages,
    _rekey,
    _retention,
    _schema,
    _search,
    _sessions,
    _state,
    _stats,
    _usage,
)
from . import _validate as check
from ._appends import Appender
from ._coalesce import AppendWriter
from ._crypto import Keyring, parse_keys
from ._failures import redact
from ._pools import PoolOptions
from ._retention import ErasureReport, Sweeper
from ._rows import no_key
from ._runner import Runner
from ._scope import Scope, nothing
from ._sql import render
from .errors import ConfigurationError, StoreClosed
from .migrations import Distribution, Migration, MigrationStatus, apply_migrations, distribute, migration_status
from .models import (
    Branch,
    Message,
    NewMessage,
    SearchHit,
    Session,
    SessionCursor,
    StoreStats,
    TurnUsage,
    UsageTotal,
)
from .retry import RetryPolicy
from .windows import TokenCounter, Window

__all__ = ["ErasureReport", "PostgresSessionStore", "redact"]


class PostgresSessionStore:
    """Agent sessions and their messages in PostgreSQL.

    Construction does no I/O, and no ``connect()`` is needed: the first call made in an event
    loop opens a pool for that loop (a store shared by several threads or by repeated
    ``asyncio.run`` calls gets one pool per loop) and, the first time, applies pending
    migrations. ``connect()`` does that eagerly; ``close()`` (or leaving ``async with``) closes
    every pool. The URL is *database_url*, else ``$DATABASE_URL``, else an embedded
    PostgreSQL started on demand (see :mod:`convostore.embedded`).

    Every method is one round trip unless its docstring says otherwise, raises only
    :class:`~convostore.errors.ConvostoreError` subclasses, and retries failures of the
    connection or server within the *retry* policy's deadline (writes are idempotent, so a
    retry never stores twice). A write whose caller is cancelled completes (or fails) before
    the cancellation reaches the caller.

    Options (durations are float seconds):

    * ``schema``: where the tables live (default ``$CONVOSTORE_SCHEMA`` or ``public``).
    * ``tenant``: the application whose sessions this store reads and writes (default
      ``$CONVOSTORE_TENANT`` or ``"default"``); :meth:`scoped` gives views of other tenants
      or of one user. Session ids are unique per tenant.
    * ``actor``: who the audit trail records for deletions, erasures, exports and imports
      made through this store (default ``$CONVOSTORE_ACTOR``), beside the database role.
    * ``min_size`` / ``max_size``: bounds of each event loop's pool.
    * ``command_timeout``: per-statement limit; ``acquire_timeout``: wait for a pooled
      connection; ``connect_timeout``: opening a connection. Each is further bounded by what
      is left of the call's deadline.
    * ``pgbouncer=True``: no server-side prepared statement cache (transaction pooling).
    * ``route_to_nodes``: on distributed tables, send appends and history reads straight to
      the Citus node holding the session, through a pool per node (same credentials, the host
      and port the cluster's metadata names), instead of through the coordinator (default
      ``$CONVOSTORE_ROUTE_TO_NODES``); see ``convostore.citus``.
    * ``apply_migrations``: migrate on first use (default); ``False`` instead checks that the
      schema exists and is up to date, raising :class:`~convostore.errors.SchemaNotReady`;
      ``None`` does neither (for tools that manage the schema, like ``convostore migrate``).
    * ``coalesce_appends``: concurrent appends share statements and commits (see
      :mod:`convostore._coalesce`); a lone append is sent at once either way.
    * ``encryption_keys``: base64 master keys (default ``$CONVOSTORE_ENCRYPTION_KEYS``,
      comma-separated); with them, what messages say is sealed at rest with the first key
      (AES-GCM, a key per tenant) and rows sealed by any of them open. See :mod:`convostore._crypto`
      for what stays plaintext, and :meth:`rekey` for rotation.
    * ``distribute``: on a Citus coordinator, distribute the tables when migrating (default
      ``$CONVOSTORE_DISTRIBUTE``); see :meth:`distribute`. Whether the tables are
      distributed is found out when a pool opens, and the few statements whose shape must
      differ there are chosen then.
    * ``token_counter``: counts a message's tokens when it is written, for token-budget
      windows (default: about four characters a token; see
      :func:`~convostore.windows.tiktoken_counter`).
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str | None = None,
        tenant: str | None = None,
        actor: str | None = None,
        apply_migrations: bool | None = True,
        distribute: bool | None = None,
        encryption_keys: Sequence[str] | None = None,
        token_counter: TokenCounter | None = None,
        command_timeout: float | None = 30.0,
        acquire_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        pgbouncer: bool = False,
        route_to_nodes: bool | None = None,
        coalesce_appends: bool = True,
        max_inactive_connection_lifetime: float = 300.0,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        schema = schema or os.environ.get("CONVOSTORE_SCHEMA") or "public"
        # Both shapes of the statements, validating the schema name now; the one in use is
        # chosen once a pool opens and finds out whether the tables are distributed.
        shapes = (render(schema), render(schema, distributed=True))
        if distribute is None:
            distribute = os.environ.get("CONVOSTORE_DISTRIBUTE", "").lower() in ("1", "true", "yes")
        keyring = (
            Keyring([k for key in encryption_keys for k in parse_keys(key)]) if encryption_keys else Keyring.from_env()
        )
        if token_counter is not None and not callable(token_counter):
            raise ConfigurationError("token_counter must be a callable taking a str and returning an int")
        tenant = check.scope_name(tenant or os.environ.get("CONVOSTORE_TENANT") or "default", "tenant")
        options = PoolOptions(
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            acquire_timeout=acquire_timeout,
            connect_timeout=connect_timeout,
            max_inactive_connection_lifetime=max_inactive_connection_lifetime,
            pgbouncer=pgbouncer,
            route_to_nodes=(
                os.environ.get("CONVOSTORE_ROUTE_TO_NODES", "").lower() in ("1", "true", "yes")
                if route_to_nodes is None
                else route_to_nodes
            ),
            connect_kwargs=dict(connect_kwargs or {}),
        )
        migrate, spread = apply_migrations, distribute
        runner = Runner(
            database_url,
            options,
            retry or RetryPolicy.from_env(),
            prepare=lambda conn: _schema.prepare(conn, runner, schema, migrate, spread),
        )
        self._scope = Scope(
            schema=schema,
            tenant=tenant,
            user=None,
            actor=check.optional_identifier(actor or os.environ.get("CONVOSTORE_ACTOR"), "actor"),
            runner=runner,
            shapes=shapes,
            keyring=keyring,
            opener=no_key if keyring is None else keyring.opener(tenant),
            count_tokens=token_counter,
            appender=Appender(runner, shapes[0]),
            coalesce=coalesce_appends,
        )
        """What convostore's own modules use (export and import, keys, roles, adapters)."""
        self._sweeper: Sweeper | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the tables."""
        return self._scope.schema

    @property
    def tenant(self) -> str:
        """The tenant (application) this store's calls act in (``$CONVOSTORE_TENANT`` or ``"default"``)."""
        return self._scope.tenant

    @property
    def user(self) -> str | None:
        """The user a scoped view acts for (``None``: every user of the tenant)."""
        return self._scope.user

    def scoped(self, *, tenant: str | None = None, user: str | None = None) -> PostgresSessionStore:
        """A view of this store acting in *tenant* (default: this store's) for *user*.

        The view shares this store's connections (closing either closes both). With *user*,
        every call of the view acts for that user alone: ``user_id`` arguments default to it,
        another user's id is refused, and a session of another user raises
        :class:`~convostore.errors.SessionOwnershipError` (or, under row-level security,
        is not seen at all). A user view cannot be widened again.
        """
        view = copy.copy(self)
        view._scope, view._sweeper = self._scope.view(tenant, user), None
        return view

    def acting_user(self, user_id: object = None) -> str | None:
        """The user a call acts for: *user_id*, or the view's user; another user is refused."""
        return self._scope.acting_user(user_id)

    @property
    def encrypted(self) -> bool:
        """Whether this store seals what messages say (it has encryption keys)."""
        return self._scope.keyring is not None

    def scope(self, all_tenants: bool = False) -> tuple[str, str] | None:
        """The row-level security scope of a call; ``None`` for an operator's call across
        tenants, which a role subject to row-level security cannot make."""
        return self._scope.rls(all_tenants)

    @property
    def database_url(self) -> str | None:
        """The URL in use once resolved (``None`` before first use if none was given)."""
        return self._scope.runner.url

    @property
    def pool(self) -> asyncpg.Pool:
        """The current event loop's asyncpg pool (raises :class:`StoreClosed` when it is not open)."""
        pool = self._scope.runner.current_pool()
        if pool is None:
            raise StoreClosed("no pool is open in this event loop: call connect() or use 'async with'")
        return pool

    async def connect(self) -> Self:
        """Open this event loop's pool now (starting the embedded server if no URL is
        configured) and migrate, instead of on first use. Safe to call concurrently."""
        self._scope.runner.reopen()
        await self._scope.runner.run("connect", nothing)
        return self

    async def close(self) -> None:
        """Stop the sweeper, let queued appends finish, and close every pool. Later calls raise
        :class:`StoreClosed` until ``connect()`` is called again."""
        await self.stop_sweeper()
        writer = self._scope.runner.find_local("appends")
        if isinstance(writer, AppendWriter):
            await writer.drain()
        await self._scope.runner.close()

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations (safe to run from many processes at once)."""
        return await self._scope.run("migrate", lambda conn: apply_migrations(conn, self.schema))

    async def distribute(self) -> Distribution:
        """Distribute the tables and the append and read functions over the Citus cluster
        this store connects to (its coordinator); see :func:`convostore.migrations.distribute`."""
        done = await self._scope.run("distribute", lambda conn: distribute(conn, self.schema))
        self._scope.runner.distributed = True
        return done

    async def migration_status(self) -> list[MigrationStatus]:
        """Every known migration with the time it was applied, or ``None`` if pending."""
        return await self._scope.run("migration status", lambda conn: migration_status(conn, self.schema))

    # -- sessions -----------------------------------------------------------------------------

    async def create_session(
        self,
        user_id: str | None,
        agent_name: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        ttl: timedelta | float | None = None,
        expires_in: timedelta | float | None = None,
    ) -> Session:
        """Create a session of *user_id* (in a user view, ``None`` means the view's user) and
        return it; the id is generated unless *session_id* is given.

        *ttl* gives the session a sliding expiry, *ttl* after its last activity; *expires_in*
        a fixed one (one or the other, at most 100 years). Expired sessions are removed by
        :meth:`delete_expired_sessions`. An existing *session_id* raises :class:`SessionExists`.
        """
        return await _sessions.create_session(self._scope, user_id, agent_name, metadata, session_id, ttl, expires_in)

    async def get_session(self, session_id: str) -> Session | None:
        """The session with all its messages in order, or ``None`` if it does not exist."""
        return await _sessions.get_session(self._scope, session_id)

    async def update_metadata(self, session_id: str, patch: Mapping[str, Any]) -> Session:
        """Merge *patch* into the session's metadata (top-level keys; JSONB ``||``)."""
        return await _sessions.update_metadata(self._scope, session_id, patch)

    async def set_expiry(
        self,
        session_id: str,
        *,
        ttl: timedelta | float | None = None,
        expires_in: timedelta | float | None = None,
    ) -> Session:
        """Set (or with neither argument, remove) a session's expiry; see :meth:`create_session`."""
        return await _sessions.set_expiry(self._scope, session_id, ttl, expires_in)

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session and its messages; ``False`` if it did not exist. Audited."""
        return await _sessions.delete_session(self._scope, session_id)

    async def get_user_sessions(
        self,
        user_id: str | None = None,
        limit: int = 10,
        *,
        before: Session | SessionCursor | None = None,
        with_messages: bool = True,
        messages_limit: int | None = None,
        agent_name: str | None = None,
    ) -> list[Session]:
        """A user's sessions (in a user view, ``None`` means the view's user), most recently
        updated first, in one query.

        Pass the last session of a page as *before* for the next page (keyset pagination:
        as fast on page 1,000 as on page 1). With *with_messages*, each session carries its
        messages (the latest *messages_limit* of them, if given); without, only their count.
        """
        return await _sessions.get_user_sessions(
            self._scope, user_id, limit, before, with_messages, messages_limit, agent_name
        )

    async def list_sessions(
        self,
        *,
        user_id: str | None = None,
        agent_name: str | None = None,
        updated_since: datetime | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int = 20,
        before: Session | SessionCursor | None = None,
    ) -> list[Session]:
        """The tenant's sessions (in a user view, its user's), most recently updated first,
        each with its message count: of one user, of one agent, updated since a time, whose
        metadata contains *metadata* (JSON containment); keyset-paginated with *before*."""
        return await _sessions.list_sessions(self._scope, user_id, agent_name, updated_since, metadata, limit, before)

    # -- messages -----------------------------------------------------------------------------

    async def add_message(
        self,
        session_id: str,
        role: str,
        content: str,
        tool_calls: list[Any] | None = None,
        tool_call_id: str | None = None,
        *,
        message_id: str | None = None,
        raw: Any | None = None,
    ) -> Message:
        """Append one message; see :meth:`add_messages`."""
        message = NewMessage(role, content, tool_calls, tool_call_id, message_id, raw)
        return (await _messages.add_messages(self._scope, session_id, [message], None, "agent", "main"))[0]

    async def add_messages(
        self,
        session_id: str,
        messages: Sequence[NewMessage | Mapping[str, Any]],
        *,
        user_id: str | None = None,
        agent_name: str = "agent",
        branch: str = "main",
    ) -> list[Message]:
        """Append *messages* atomically in one round trip and return them as stored.

        The batch gets consecutive ``seq`` numbers after every message committed before it,
        and the session's ``updated_at`` (and sliding expiry) move in the same call.
        Appending a batch whose ids are already stored (a retry) returns the stored rows and
        writes nothing; reusing an id for a different message raises :class:`DuplicateMessageId`.

        Without *user_id*, an unknown session raises :class:`SessionNotFound`. With it, the
        session is created on first write (owned by *user_id*, for *agent_name*) and a
        session owned by another user raises :class:`SessionOwnershipError` (as it does in a
        user view, whose user owns what it creates).

        *branch* is the branch written to (see :meth:`fork_session`); one the session does not
        have raises :class:`BranchNotFound`.
        """
        return await _messages.add_messages(self._scope, session_id, messages, user_id, agent_name, branch)

    async def get_messages(
        self,
        session_id: str,
        *,
        limit: int | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        user_id: str | None = None,
        branch: str = "main",
        window: Window | None = None,
        raw: bool = False,
    ) -> list[Message]:
        """Messages in chronological order: all of them, or the latest *limit*.

        *before_seq* pages backwards: pass the ``seq`` of the oldest message you hold to get
        the *limit* messages before it; *after_seq* pages forwards (the first *limit* after
        it). An unknown session has no messages (``[]``). With
        *user_id* (or in a user view), a session owned by another user raises
        :class:`SessionOwnershipError` (checked in the same query).

        What is read is the view of *branch* (its own messages after its parent's up to the
        fork; an unknown branch raises :class:`BranchNotFound`), compacted: the messages a
        compaction summary stands for are left out, unless *raw*. A *window*
        (:class:`~convostore.windows.Window`) reads only the latest turns or tokens, cut
        where nothing is parted from what it belongs to; *limit* then caps it further.
        """
        return await _messages.get_messages(
            self._scope, session_id, limit, before_seq, after_seq, user_id, branch, window, raw
        )

    async def pop_message(self, session_id: str, *, user_id: str | None = None, branch: str = "main") -> Message | None:
        """Remove and return the newest message (``None`` if there is none).

        Atomic: concurrent pops each get a different message. Not retried after a failure
        that may have taken effect, since a retry could pop a second message. With
        *user_id* (or in a user view), another user's session raises
        :class:`SessionOwnershipError`. In a forked session, the newest message of *branch*'s
        view is popped, unless another branch shares it (:class:`BranchConflict`).
        """
        return await _messages.pop_message(self._scope, session_id, user_id, branch)

    async def clear_session(self, session_id: str, *, user_id: str | None = None, branch: str | None = None) -> int:
        """Delete every message of the session (the session stays); return how many. Audited.

        With *user_id* (or in a user view), another user's session raises
        :class:`SessionOwnershipError`. Without *branch*, every branch goes too; with it, that
        branch's view is emptied, and its messages that other branches share stay theirs.
        """
        return await _messages.clear_session(self._scope, session_id, user_id, branch)

    # -- branches -----------------------------------------------------------------------------

    async def fork_session(
        self,
        session_id: str,
        name: str,
        *,
        at_seq: int | None = None,
        parent: str = "main",
        user_id: str | None = None,
    ) -> Branch:
        """Fork branch *parent* of the session at seq *at_seq* (default: its latest message;
        ``0``: none of them) as branch *name*, and return it.

        Nothing is copied: the branch's view is *parent*'s up to *at_seq*, then its own
        messages (append with ``branch=name``). Raises :class:`BranchExists` for a name the
        session has, :class:`BranchNotFound` for an unknown *parent*, :class:`InvalidInput`
        if *at_seq* is not a message of *parent*'s view.
        """
        return await _branches.fork_session(self._scope, session_id, name, at_seq, parent, user_id)

    async def list_branches(self, session_id: str, *, user_id: str | None = None) -> list[Branch]:
        """The session's branches (``main`` first, unless deleted), each with the number of
        messages of its own; :class:`SessionNotFound` if there is no such session."""
        return await _branches.list_branches(self._scope, session_id, user_id)

    async def delete_branch(self, session_id: str, name: str, *, user_id: str | None = None) -> int:
        """Delete branch *name* (``main`` too) and return how many messages were removed.
        Audited.

        Other branches stay whole: the messages of *name* that a branch forked from it
        shares stay stored for that branch (and go when nothing shares them any more).
        """
        return await _branches.delete_branch(self._scope, session_id, name, user_id)

    # -- compaction ---------------------------------------------------------------------------

    async def compact(
        self,
        session_id: str,
        summary: Sequence[NewMessage | Mapping[str, Any]],
        *,
        from_seq: int | None = None,
        expect: Sequence[int] | None = None,
        prune_to: int | None = None,
        branch: str = "main",
        user_id: str | None = None,
    ) -> list[Message] | None:
        """Replace, in the compacted view of *branch*, its messages from seq *from_seq* on
        (default: all of them) with *summary*, keeping them stored; return the stored summary.

        The replaced messages stay in the session (``get_messages(raw=True)``, export); each
        summary message ``covers`` their seq range. One transaction under the session's lock:
        appends made meanwhile land after the summary. With *expect* (the seqs of the view
        from *from_seq* on that the summary was made from), nothing is written and ``None``
        is returned if the view holds anything else by then; ``None`` too if there is
        nothing to replace. Retrying with the same summary ids is safe: a summary already
        stored is returned as it is. An empty *summary* replaces the messages with nothing:
        a marker row (role ``item``, never in the view) records the range, and ``[]`` is
        returned. With *prune_to*, the view's messages before *from_seq* up to that seq are
        hidden too, in the same transaction (a marker records their range).
        """
        return await _compaction.compact(self._scope, session_id, summary, from_seq, expect, prune_to, branch, user_id)

    # -- search -------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        limit: int = 20,
        offset: int = 0,
        snippet_words: int = 30,
        all_tenants: bool = False,
    ) -> list[SearchHit]:
        """Messages of the store's scope (a user view: its user's) matching *query*, best
        first: web search syntax (words, ``"a phrase"``, ``or``, ``-word``), English
        stemming, ranked by cover density. Narrowed to a session, a user or an agent; paged
        with *limit* and *offset*. Every stored message is searched, those a compaction
        replaced too; sealed (encrypted) messages are not searchable."""
        return await _search.search(
            self._scope, query, session_id, user_id, agent_name, limit, offset, snippet_words, all_tenants
        )

    async def search_index(self) -> bool:
        """Whether the full-text index :meth:`search` reads is built (and valid) in this schema."""
        return await _search.search_index(self._scope)

    async def create_search_index(self, *, build_timeout: float | None = 3600.0) -> bool:
        """Build the full-text index that makes :meth:`search` fast (``CREATE INDEX
        CONCURRENTLY``: appends go on meanwhile); ``False`` if it was already there.

        Search is opt-in: without the index a search reads every message of its scope, and
        with it every append pays for indexing what it writes (the README gives the cost).
        Needs the tables' owner. *build_timeout* bounds the build (seconds; ``None``: unbounded);
        an interrupted build leaves an invalid index, which the next call replaces."""
        return await _search.create_search_index(self._scope, build_timeout)

    async def drop_search_index(self) -> bool:
        """Drop the full-text index (``DROP INDEX CONCURRENTLY``): appends stop paying for it,
        and :meth:`search` reads every message of its scope. ``False`` if there was none."""
        return await _search.drop_search_index(self._scope)

    # -- state beside conversations -----------------------------------------------------------

    async def get_state(self, agent_name: str, *, user_id: str | None = None) -> dict[str, Any]:
        """The state an agent keeps beside its conversations: shared by all its users, or with
        *user_id*, that user's (``{}`` if none). Frameworks' app and user state live here."""
        return await _state.get_state(self._scope, agent_name, user_id)

    async def update_state(
        self, agent_name: str, patch: Mapping[str, Any], *, user_id: str | None = None
    ) -> dict[str, Any]:
        """Merge *patch* into the agent's state (its users' shared state, or with *user_id*
        that user's): top-level keys replaced, atomically; return the new state."""
        return await _state.update_state(self._scope, agent_name, patch, user_id)

    # -- usage --------------------------------------------------------------------------------

    async def record_usage(
        self,
        session_id: str,
        usage: TurnUsage,
        *,
        usage_id: str | None = None,
        branch: str = "main",
        user_id: str | None = None,
    ) -> None:
        """Record what one turn of the session cost. Pass the same *usage_id* when retrying
        across processes: a turn is recorded once. Raises :class:`SessionNotFound` or
        :class:`SessionOwnershipError`."""
        await _usage.record_usage(self._scope, session_id, usage, usage_id, branch, user_id)

    async def usage(
        self,
        *,
        by: str = "session",
        session_id: str | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        all_tenants: bool = False,
    ) -> list[UsageTotal]:
        """Usage totals grouped *by* ``"session"``, ``"user"``, ``"agent"`` or ``"day"`` (UTC),
        of the store's scope (a user view: that user's), optionally narrowed to a session, a
        user, an agent and a time range [*since*, *until*)."""
        return await _usage.usage(self._scope, by, session_id, user_id, agent_name, since, until, all_tenants)

    # -- retention ----------------------------------------------------------------------------

    async def idle_cutoff(self, older_than: timedelta | float) -> datetime:
        """The server's time now minus *older_than*: sessions last updated before it are idle.

        Pass it as ``cutoff=`` to :meth:`count_idle_sessions` and :meth:`delete_idle_sessions`
        so that a count and the deletion that follows agree (what ``cleanup --dry-run`` shows).
        """
        return await _retention.idle_cutoff(self._scope, older_than)

    async def delete_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        all_tenants: bool = False,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions not updated for *older_than* (or since *cutoff*); return how many.

        The cutoff is fixed once, at the start, so a long cleanup never reaches sessions that
        were not idle long enough when it began. Works in batches of *batch_size*, each its
        own short transaction (and audit record), skipping sessions that a live writer holds
        locked (they are not idle). *all_tenants* widens it to every tenant (an operator's
        cleanup). *on_batch* is called with each batch's count (progress bars).
        """
        return await _retention.delete_idle_sessions(
            self._scope, older_than, cutoff, user_id, agent_name, all_tenants, batch_size, on_batch
        )

    async def count_idle_sessions(
        self,
        older_than: timedelta | float | None = None,
        *,
        cutoff: datetime | None = None,
        user_id: str | None = None,
        agent_name: str | None = None,
        all_tenants: bool = False,
    ) -> int:
        """How many sessions :meth:`delete_idle_sessions` would delete now."""
        return await _retention.count_idle_sessions(self._scope, older_than, cutoff, user_id, agent_name, all_tenants)

    async def delete_expired_sessions(
        self,
        *,
        all_tenants: bool = False,
        batch_size: int = 1000,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Delete sessions whose expiry has passed; safe to run from several processes at once.
        Audited per batch; *all_tenants* widens it to every tenant."""
        return await _retention.delete_expired_sessions(self._scope, all_tenants, batch_size, on_batch)

    async def delete_user(
        self, user_id: str | None = None, *, batch_size: int = 500, on_batch: Callable[[int], None] | None = None
    ) -> ErasureReport:
        """Erase every session and message of *user_id* in this tenant (right to erasure).

        Batched: each batch of sessions is deleted with its messages in one statement (with
        its audit record), so a failure never leaves a session without some of its messages;
        re-running finishes the job.
        """
        return await _retention.delete_user(self._scope, user_id, batch_size, on_batch)

    def start_sweeper(self, interval: float, *, batch_size: int = 1000) -> Sweeper:
        """Delete expired sessions of this store's tenant every *interval* seconds in a
        background task of the running event loop.

        Returns the running :class:`~convostore.cleanup.Sweeper`; :meth:`stop_sweeper` (or
        :meth:`close`) stops it. Safe with other processes sweeping the same database.
        """
        if self._sweeper is None or not self._sweeper.running:
            self._sweeper = Sweeper(self.delete_expired_sessions, interval, batch_size=batch_size)
            self._sweeper.start()
        return self._sweeper

    async def stop_sweeper(self) -> None:
        """Stop the background sweeper, if one runs."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            await sweeper.stop()

    # -- operators: statistics, the audit trail, key rotation ---------------------------------

    async def stats(self, *, all_tenants: bool = False) -> StoreStats:
        """Counts, per-agent totals, table and index sizes, oldest and newest activity of this
        tenant (of this view's user; of every tenant with *all_tenants*).

        Three statements; it scans both tables, so it is an operator's tool, not a hot path.
        """
        return await _stats.stats(self._scope, all_tenants)

    async def audit(
        self, action: str, *, rows: int, all_tenants: bool = False, details: Mapping[str, Any] | None = None
    ) -> None:
        """Record *action* in the audit trail, with this store's actor and the database role."""
        await self._scope.audit(action, rows=rows, all_tenants=all_tenants, details=details)

    async def rekey(
        self,
        *,
        include_plaintext: bool = False,
        all_tenants: bool = False,
        batch_size: int = 500,
        on_batch: Callable[[int], None] | None = None,
    ) -> int:
        """Re-seal every message sealed with another master key than the current one (key
        rotation), and with *include_plaintext* seal the messages stored before encryption
        was turned on; return how many. Needs the current key first in the store's keys and
        the old ones after it.

        Runs in batches while appends go on (new messages are sealed with the current key
        already). A row is re-sealed only if it still holds what was read, so two rekeys at
        once, or a rekey re-run after a failure, never seal a row twice.
        """
        return await _rekey.rekey(self._scope, include_plaintext, all_tenants, batch_size, on_batch)
