"""The ``convostore`` command: migrations, retention, inspection, export and erasure.

Thin by design: it parses, calls the library, and renders. Exit codes: 0 success, 1 failure
(a convostore error, shown as one line on stderr; ``--debug`` shows the traceback), 2 usage.
The database is ``--database-url``, else ``$DATABASE_URL``, else the embedded PostgreSQL:
the library's rule. Commands that write what a new database needs (``migrate``, ``import``,
``keys create``, ``serve``) apply pending migrations; read and delete commands refuse a schema
that is missing or not migrated. Text read from the store is printed with control characters made
visible, so stored content can never drive the operator's terminal.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import getpass
import inspect
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ._validate import MAX_DURATION
from .errors import ConvostoreError, ImportFileError
from .models import HIT_END, HIT_START, Message, Session, SessionCursor
from .store import PostgresSessionStore

if TYPE_CHECKING:
    from .roles import Roles

T = TypeVar("T")
logger = logging.getLogger("convostore.cli")

app = typer.Typer(
    name="convostore",
    help="Operate convostore: AI agents' conversations in PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    # Plain click formatting: a usage error is one "Error: ..." line, as scripts expect.
    rich_markup_mode=None,
)
sessions_app = typer.Typer(help="List and show sessions.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(sessions_app, name="sessions")
roles_app = typer.Typer(help="Database roles for production.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(roles_app, name="roles")
keys_app = typer.Typer(help="API keys of convostore serve.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
search_index_app = typer.Typer(
    help="The opt-in full-text index that makes `convostore search` fast.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(search_index_app, name="search-index")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

# -- terminal safety -------------------------------------------------------------------------

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that can
# make text display as something else.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def safe(text: str, *, oneline: bool = False) -> str:
    """*text* ready for rich: control characters shown as ``\\xNN`` / ``\\uNNNN``, markup escaped.
    With *oneline*, newlines and tabs are shown escaped too (table cells, headers)."""

    def show(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    text = _UNSAFE.sub(show, text)
    if oneline:
        text = text.replace("\n", "\\n").replace("\t", "\\t")
    return escape(text)


def _print_json(value: Any) -> None:
    """Print *value* as indented JSON: non-ASCII kept, every control character escaped."""
    text = json.dumps(value, default=_json_default, ensure_ascii=False, indent=2)
    out.print(_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text), markup=False)


# -- options shared by every command ---------------------------------------------------------


@dataclass
class _Options:
    database_url: str | None = None
    schema: str | None = None
    tenant: str | None = None
    debug: bool = False
    announced: bool = False


DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="DATABASE_URL", show_envvar=True, help="PostgreSQL URL; unset means embedded."
    ),
]
Schema = Annotated[
    str | None, typer.Option("--schema", envvar="CONVOSTORE_SCHEMA", show_envvar=True, help="Schema of the tables.")
]
Tenant = Annotated[
    str | None,
    typer.Option(
        "--tenant", envvar="CONVOSTORE_TENANT", show_envvar=True, help="The application whose sessions to act on."
    ),
]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")]
AllTenants = Annotated[bool, typer.Option("--all-tenants", help="Every tenant (an operator's run), not one.")]


def _version(value: bool) -> None:
    if value:
        from ._version import __version__

        out.print(f"convostore {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    database_url: DatabaseUrl = None,
    schema: Schema = None,
    tenant: Tenant = None,
    debug: Debug = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    ctx.obj = _Options(database_url, schema, tenant, debug)
    _configure_logging(debug)


def _configure_logging(debug: bool) -> None:
    # WARNING by default: retries are logged at INFO, and a failure is reported once, as
    # the one-line error, not also as log lines before it.
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True
    )


def common(fn: Callable[..., T]) -> Callable[..., T]:
    """Give a command the global options too, so that they work after the subcommand
    (``convostore stats --schema x``) as well as before it."""
    signature = inspect.signature(fn, eval_str=True)
    extra = [
        inspect.Parameter("database_url", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=DatabaseUrl),
        inspect.Parameter("schema", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Schema),
        inspect.Parameter("tenant", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Tenant),
        inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Debug),
    ]

    @functools.wraps(fn)
    def command(
        ctx: typer.Context,
        *args: Any,
        database_url: str | None,
        schema: str | None,
        tenant: str | None,
        debug: bool,
        **kwargs: Any,
    ) -> T:
        opts: _Options = ctx.obj
        source = ctx.get_parameter_source
        # Given after the subcommand wins over before it, and a value from the environment
        # (which both levels read) only where nothing was given explicitly.
        for name, value in (("database_url", database_url), ("schema", schema), ("tenant", tenant)):
            given = source(name)
            if (value is not None and given is not None and given.name == "COMMANDLINE") or getattr(opts, name) is None:
                setattr(opts, name, value)
        if debug and not opts.debug:
            opts.debug = True
            _configure_logging(True)
        return fn(ctx, *args, **kwargs)

    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*signature.parameters.values(), *extra]
    )
    command.__annotations__ = {
        **fn.__annotations__,
        "database_url": DatabaseUrl,
        "schema": Schema,
        "tenant": Tenant,
        "debug": Debug,
    }
    return command


# -- helpers ---------------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|min|s)")
_UNIT_SECONDS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "min": 60.0, "s": 1.0}
_UNIT_ORDER = list(_UNIT_SECONDS)


def parse_duration(text: str, param: str = "--older-than") -> timedelta:
    """``30d``, ``12h``, ``1d12h``, ``90min``, ``45s``, ``2w`` as a timedelta (usage error
    otherwise). Units go from largest to smallest, each at most once; ``m`` is refused as
    ambiguous (minutes or months?)."""
    cleaned = text.strip().lower()

    def bad(reason: str) -> typer.BadParameter:
        return typer.BadParameter(
            f"cannot parse duration {text!r}: {reason}; use e.g. 30d, 12h, 1d12h, 90min, 45s, 2w", param_hint=param
        )

    if re.fullmatch(r"[\d.]+\s*m(?:o|onths?)?", cleaned) or re.search(r"\dm(?!in)", cleaned):
        raise bad("'m' is ambiguous: write 'min' for minutes, or days for months")
    matches = list(_DURATION.finditer(cleaned))
    if not matches or "".join(m.group(0) for m in matches) != cleaned:
        raise bad("not a duration")
    units = [m.group(2) for m in matches]
    positions = [_UNIT_ORDER.index(u) for u in units]
    if positions != sorted(set(positions)):
        raise bad("each unit at most once, largest first")
    seconds = sum(float(m.group(1)) * _UNIT_SECONDS[m.group(2)] for m in matches)
    if seconds <= 0:
        raise typer.BadParameter(f"duration {text!r} must be positive", param_hint=param)
    if seconds > MAX_DURATION.total_seconds():
        raise typer.BadParameter(
            f"duration {text!r} is longer than the limit of {MAX_DURATION.days} days", param_hint=param
        )
    return timedelta(seconds=seconds)


def _database(opts: _Options, *, always: bool = False) -> str:
    """The URL to use (the library's rule: given, else ``$DATABASE_URL``, else the embedded
    server, started now), said once on stderr: on a terminal (or *always*), else at INFO so
    that scripts' stderr keeps to errors."""
    from .embedded import describe_database, embedded_url

    url = opts.database_url or os.environ.get("DATABASE_URL") or None
    if not opts.announced:
        opts.announced = True
        line = describe_database(url)
        if always or err.is_terminal:
            err.print(f"[dim]{escape(line)}[/]")
        else:
            logger.info("%s", line)
    if url is None:
        url = embedded_url()
    opts.database_url = url
    return url


def _run(
    ctx: typer.Context, work: Callable[[PostgresSessionStore], Awaitable[T]], *, migrations: bool | None = False
) -> T:
    """Open a store, run *work*, map our errors to one line and exit code 1. The store only
    checks the schema (``migrations=False``): read and delete commands never create one."""
    opts: _Options = ctx.obj

    async def main(url: str) -> T:
        store = PostgresSessionStore(
            url,
            schema=opts.schema,
            tenant=opts.tenant,
            actor=os.environ.get("CONVOSTORE_ACTOR") or f"cli:{getpass.getuser()}",
            apply_migrations=migrations,
        )
        async with store:
            return await work(store)

    try:
        return asyncio.run(main(_database(opts)))
    except ConvostoreError as exc:
        if opts.debug:
            raise
        err.print(f"[red]error:[/] {safe(str(exc), oneline=True)}")
        raise typer.Exit(1) from None
    except OSError as exc:  # files given on the command line
        if opts.debug:
            raise
        err.print(f"[red]error:[/] {safe(f'{exc.strerror or exc}: {exc.filename}', oneline=True)}")
        raise typer.Exit(1) from None


def _progress(total: int | None, what: str) -> Progress:
    return Progress(
        TextColumn(f"[bold]{what}"),
        BarColumn(),
        MofNCompleteColumn() if total is not None else TextColumn("{task.completed}"),
        TimeElapsedColumn(),
        console=err,
        disable=not err.is_terminal,
        transient=True,
    )


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _keep_whole(table: Table, *headers: str) -> Table:
    """*table* with the columns named *headers* (timestamps, ids) never cut or folded: on a
    narrow terminal the other columns fold instead, losing nothing."""
    for column in table.columns:
        if column.header in headers:
            column.no_wrap = True
            column.min_width = max(column.min_width or 0, len(str(column.header)))
        else:
            column.overflow = "fold"
    return table


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


# -- migrate ----------------------------------------------------------------------------------


@app.command()
@common
def migrate(
    ctx: typer.Context,
    status: Annotated[
        bool, typer.Option("--status", help="List applied and pending migrations; change nothing.")
    ] = False,
) -> None:
    """Create the tables or apply pending schema migrations (safe from several processes at once)."""
    if status:
        rows = _run(ctx, lambda s: s.migration_status(), migrations=None)
        table = _keep_whole(Table("version", "name", "applied at"), "version", "applied at")
        for r in rows:
            table.add_row(f"{r.version:04d}", r.name, _when(r.applied_at) if r.applied_at else "[yellow]pending[/]")
        out.print(table)
        return
    applied = _run(ctx, lambda s: s.migrate(), migrations=None)
    if applied:
        for m in applied:
            out.print(f"applied {m.version:04d}_{m.name}")
    else:
        out.print("schema is up to date")


@app.command()
@common
def distribute(ctx: typer.Context) -> None:
    """Distribute a migrated store over the Citus cluster whose coordinator it connects to:
    both tables by session (existing rows move), the append and read functions by session."""
    done = _run(ctx, lambda s: s.distribute())
    if done.tables or done.functions:
        out.print(f"distributed tables: {', '.join(done.tables) or '-'}; functions: {', '.join(done.functions) or '-'}")
    else:
        out.print("already distributed")


@app.command()
@common
def rekey(
    ctx: typer.Context,
    include_plaintext: Annotated[
        bool, typer.Option("--include-plaintext", help="Also seal messages stored before encryption was on.")
    ] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Messages per transaction.")] = 500,
    all_tenants: AllTenants = False,
) -> None:
    """Re-seal messages under the current master key (the first of CONVOSTORE_ENCRYPTION_KEYS;
    list the old keys after it). Safe while appends go on, and to re-run."""

    async def work(store: PostgresSessionStore) -> int:
        with _progress(None, "re-sealing") as progress:
            task = progress.add_task("rekey", total=None)
            return await store.rekey(
                include_plaintext=include_plaintext,
                all_tenants=all_tenants,
                batch_size=batch_size,
                on_batch=lambda n: progress.advance(task, n),
            )

    out.print(f"re-sealed {_run(ctx, work)} messages")


@app.command()
def keygen() -> None:
    """Print a new random master key (base64) for CONVOSTORE_ENCRYPTION_KEYS."""
    from ._crypto import new_key

    out.print(new_key())


@roles_app.command("create")
@common
def roles_create(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option("--owner", help="Owns the schema; run migrations as it.")] = "convostore_owner",
    runtime: Annotated[
        str, typer.Option("--runtime", help="The application's role: row-level security applies.")
    ] = "convostore_app",
    bind: Annotated[
        bool,
        typer.Option("--bind", help="Bind the runtime role to the tenant (--tenant): no SQL it sends reaches another."),
    ] = False,
    user: Annotated[
        str | None, typer.Option("--user", help="With --bind: bind it to this user of the tenant too.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Change roles that exist with other attributes or privileges.")
    ] = False,
) -> None:
    """Create the owner and runtime roles and hand the schema to them (run after migrate,
    as a role that may create roles; again after later migrations). Sets no passwords.
    Refuses to change a role that already exists otherwise (a superuser, say) without --force."""
    from .roles import create_roles

    if user is not None and not bind:
        raise typer.BadParameter("--user binds the role to a user: give --bind too", param_hint="--user")

    def setup(s: PostgresSessionStore) -> Awaitable[Roles]:
        return create_roles(s, owner=owner, runtime=runtime, tenant=s.tenant if bind else None, user=user, force=force)

    roles = _run(ctx, setup)
    for name in (roles.owner, roles.runtime):
        out.print(f"{'created' if name in roles.created else 'updated'} role {safe(name, oneline=True)}")
    if roles.tenant is not None:
        scope = f"tenant {roles.tenant}" + ("" if roles.user is None else f", user {roles.user}")
        out.print(f"role {safe(roles.runtime, oneline=True)} is bound to {safe(scope, oneline=True)}")
    out.print("set their passwords with ALTER ROLE ... PASSWORD, or use your server's authentication")


@keys_app.command("create")
@common
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="What the key is for.")] = "",
    user: Annotated[str | None, typer.Option("--user", help="Act for this user only (a user's view).")] = None,
    operator: Annotated[bool, typer.Option("--operator", help="Act across every tenant (an operator's key).")] = False,
    expires_in: Annotated[
        str | None,
        typer.Option(
            "--expires-in", metavar="DURATION", help="Refused after this long: 30d, 12h, 2w... (default: never)."
        ),
    ] = None,
) -> None:
    """Create an API key for the tenant (--tenant), one of its users, or an operator. The key is
    printed once, on standard output; only its hash is stored. Applies pending migrations first."""
    from .keys import create_key

    lifetime = None if expires_in is None else parse_duration(expires_in, "--expires-in")
    # migrations=True: the first key is often the first thing made in a new database.
    token, key = _run(
        ctx,
        lambda s: create_key(s, name=name, user=user, operator=operator, expires_in=lifetime),
        migrations=True,
    )
    scope = "every tenant" if key.operator else f"tenant {key.tenant}" + (f", user {key.user}" if key.user else "")
    until = f", valid until {_when(key.expires_at)}" if key.expires_at else ""
    err.print(f"created key {key.id} for {safe(scope, oneline=True)}{until}; it is shown once:")
    out.print(token, markup=False)


@keys_app.command("list")
@common
def keys_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    all_tenants: AllTenants = False,
) -> None:
    """List the tenant's API keys (never their secrets)."""
    from .keys import list_keys

    keys = _run(ctx, lambda s: list_keys(s, all_tenants=all_tenants))
    if as_json:
        _print_json([asdict(k) for k in keys])
        return
    # An expiry column only when a key has one: narrow terminals keep room for the names.
    expiring = any(k.expires_at for k in keys)
    headers = ("id", "name", "tenant", "user", "created", *(("expires",) if expiring else ()), "revoked")
    table = _keep_whole(Table(*headers), "id", "created", "expires", "revoked")
    for k in keys:
        expires = (_when(k.expires_at) if k.expires_at else "",) if expiring else ()
        table.add_row(
            k.id,
            safe(k.name, oneline=True),
            safe(k.tenant or "(operator)", oneline=True),
            safe(k.user or "(every user)", oneline=True),
            _when(k.created_at),
            *expires,
            _when(k.revoked_at) if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
@common
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id (from keys list).")],
    all_tenants: AllTenants = False,
) -> None:
    """Revoke an API key: it is refused from then on."""
    from .keys import revoke_key

    if not _run(ctx, lambda s: revoke_key(s, key_id, all_tenants=all_tenants)):
        err.print(f"[red]error:[/] no valid key {safe(key_id, oneline=True)}")
        raise typer.Exit(1)
    out.print(f"revoked key {safe(key_id, oneline=True)}")


# -- retention --------------------------------------------------------------------------------


@app.command()
@common
def cleanup(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", metavar="DURATION", help="Idle time: 30d, 12h, 1d12h, 90min...")
    ],
    user: Annotated[str | None, typer.Option("--user", help="Only this user's sessions.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's sessions.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sessions per transaction.")] = 1000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    all_tenants: AllTenants = False,
) -> None:
    """Delete sessions not updated for --older-than, in batches that skip sessions in use.

    "Idle" is fixed when the command starts: sessions that become idle while it runs are
    left for the next run, and --dry-run counts exactly what a real run would delete then.
    """
    age = parse_duration(older_than)

    async def work(store: PostgresSessionStore) -> tuple[int, int]:
        cutoff = await store.idle_cutoff(age)
        total = await store.count_idle_sessions(cutoff=cutoff, user_id=user, agent_name=agent, all_tenants=all_tenants)
        if dry_run or total == 0:
            return total, 0
        with _progress(total, "deleting") as progress:
            task = progress.add_task("cleanup", total=total)
            deleted = await store.delete_idle_sessions(
                cutoff=cutoff,
                user_id=user,
                agent_name=agent,
                all_tenants=all_tenants,
                batch_size=batch_size,
                on_batch=lambda n: progress.advance(task, n),
            )
        return total, deleted

    total, deleted = _run(ctx, work)
    if dry_run:
        out.print(f"would delete {total} sessions idle for more than {older_than}")
    else:
        out.print(f"deleted {deleted} sessions idle for more than {older_than}")


@app.command()
@common
def sweep(
    ctx: typer.Context,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Sessions per transaction.")] = 1000,
    all_tenants: AllTenants = False,
) -> None:
    """Delete sessions whose expiry (TTL) has passed; safe to run from several places at once."""
    deleted = _run(ctx, lambda s: s.delete_expired_sessions(batch_size=batch_size, all_tenants=all_tenants))
    out.print(f"deleted {deleted} expired sessions")


@app.command("delete-user")
@common
def delete_user(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user whose sessions and messages are erased.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase every session and message of one user (right to erasure), in batches."""
    if not yes:
        if not sys.stdin.isatty():
            raise typer.BadParameter("refusing to erase without --yes when not interactive", param_hint="--yes")
        typer.confirm(f"Erase every session and message of {user!r}?", abort=True)

    async def work(store: PostgresSessionStore) -> Any:
        with _progress(None, "erasing") as progress:
            task = progress.add_task("erase", total=None)
            return await store.delete_user(user, on_batch=lambda n: progress.advance(task, n))

    report = _run(ctx, work)
    who = safe(report.user_id, oneline=True)
    out.print(f"erased user {who}: {report.sessions} sessions, {report.messages} messages")


# -- inspection -------------------------------------------------------------------------------


def _parse_cursor(value: str | None) -> SessionCursor | None:
    if value is None:
        return None
    try:
        when, sid = value.split(",", 1)
        parsed = datetime.fromisoformat(when)
        if parsed.tzinfo is None:
            raise ValueError("no offset")
        return SessionCursor(parsed, sid)
    except ValueError:
        raise typer.BadParameter(
            "expected UPDATED_AT,SESSION_ID as printed by a previous page", param_hint="--before"
        ) from None


def _title(session: Session) -> str:
    title = session.metadata.get("title")
    if isinstance(title, str):
        return title
    return json.dumps(session.metadata, ensure_ascii=False)[:60] if session.metadata else ""


@sessions_app.command("list")
@common
def sessions_list(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's sessions.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's sessions.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=10000, help="Sessions per page (at most 1000 without --user).")
    ] = 20,
    before: Annotated[str | None, typer.Option("--before", help="Cursor printed by the previous page.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """The tenant's sessions, or with --user one user's, most recently updated first
    (keyset-paginated)."""
    cursor = _parse_cursor(before)

    async def work(store: PostgresSessionStore) -> tuple[str, list[Session]]:
        if user is None:
            return store.tenant, await store.list_sessions(agent_name=agent, limit=limit, before=cursor)
        return store.tenant, await store.get_user_sessions(
            user, limit, before=cursor, with_messages=False, agent_name=agent
        )

    tenant, found = _run(ctx, work)
    if as_json:
        rows = [{k: v for k, v in asdict(s).items() if k != "messages"} for s in found]
        _print_json(rows)
        return
    if user is None:
        table = Table("id", "user", "agent", "messages", "updated", "title / metadata")
        table.title = f"sessions of tenant {safe(tenant, oneline=True)}"
    else:
        table = Table("id", "agent", "messages", "updated", "title / metadata")
        table.title = f"sessions of {safe(user, oneline=True)}"
    _keep_whole(table, "id", "updated")
    for s in found:
        table.add_row(
            safe(s.id, oneline=True),
            *([safe(s.user_id, oneline=True)] if user is None else []),
            safe(s.agent_name, oneline=True),
            str(s.message_count),
            _when(s.updated_at),
            safe(_title(s), oneline=True),
        )
    out.print(table)
    if len(found) == limit:
        last = found[-1]
        err.print(f"next page: --before '{last.updated_at.isoformat()},{safe(last.id, oneline=True)}'")


_ROLE_STYLE = {
    "user": "cyan",
    "assistant": "green",
    "tool": "magenta",
    "system": "yellow",
    "developer": "yellow",
    "item": "dim",
}


def _fold(text: str, lines: int, full: bool) -> str:
    """*text* (already made safe) cut to *lines* lines and 2,000 characters unless *full*."""
    if full:
        return text
    parts = text.splitlines()
    if len(parts) <= lines and len(text) <= 2000:
        return text
    kept = "\n".join(parts[:lines])[:2000]
    return f"{kept}\n[dim]... ({len(text) - len(kept)} more characters; --full shows all)[/]"


def _render(m: Message, full: bool, replaced: bool = False) -> str:
    style = _ROLE_STYLE.get(m.role, "white")
    head = f"[{style} bold]{safe(m.role, oneline=True)}[/] [dim]#{m.seq} {_when(m.created_at)}[/]"
    if m.branch != "main":
        head += f" [dim]on {safe(m.branch, oneline=True)}[/]"
    if m.covers is not None:
        head += f" [cyan]summary of #{m.covers[0]}-#{m.covers[1]}[/]"
    if replaced:
        head += " [yellow](replaced by a summary)[/]"
    body = []
    if m.content:
        body.append(_fold(safe(m.content.replace("\x00", "\\0")), 12, full))
    if m.role == "item":  # a framework's item that is no message: shown as it was given
        body.append(_fold(safe(json.dumps(m.raw, ensure_ascii=False)), 12, full))
    for call in m.tool_calls or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            name, arguments = safe(str(fn.get("name")), oneline=True), safe(str(fn.get("arguments")), oneline=True)
            body.append(f"[magenta]-> call {name}({arguments})[/] [dim]id={safe(str(call.get('id')), oneline=True)}[/]")
        else:
            body.append(f"[magenta]-> {safe(json.dumps(call, ensure_ascii=False), oneline=True)}[/]")
    if m.tool_call_id:
        head += f" [magenta]<- output of {safe(m.tool_call_id, oneline=True)}[/]"
    return head + ("\n  " + "\n  ".join("\n".join(body).splitlines()) if body else "")


@sessions_app.command("show")
@common
def sessions_show(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="The session to show.")],
    branch: Annotated[str, typer.Option("--branch", help="The branch to show.")] = "main",
    raw: Annotated[
        bool, typer.Option("--raw", help="Every stored message, those compaction replaced with a summary too.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Do not fold long content.")] = False,
) -> None:
    """Show one conversation as its model sees it (compacted), or --raw as stored: roles
    coloured, tool calls and outputs marked, summaries marked, long content folded."""

    async def work(store: PostgresSessionStore) -> tuple[Session | None, list[Message]]:
        found = await store.get_session(session_id)
        if found is None:
            return None, []
        return found, await store.get_messages(session_id, branch=branch, raw=raw)

    session, messages = _run(ctx, work)
    if session is None:
        err.print(f"[red]error:[/] no session {safe(session_id, oneline=True)}")
        raise typer.Exit(1)
    session = replace(session, messages=tuple(messages))
    if as_json:
        _print_json(asdict(session))
        return
    out.print(
        f"[bold]session {safe(session.id, oneline=True)}[/]  user {safe(session.user_id, oneline=True)}"
        f"  agent {safe(session.agent_name, oneline=True)}"
        f"  created {_when(session.created_at)}  updated {_when(session.updated_at)}"
    )
    if session.metadata:
        out.print(f"[dim]metadata {safe(json.dumps(session.metadata, ensure_ascii=False), oneline=True)}[/]")
    ranges = [m.covers for m in messages if m.covers is not None]
    for m in messages:
        replaced = raw and any(first <= m.seq <= last for first, last in ranges if m.covers != (first, last))
        out.print(_render(m, full, replaced))


@app.command()
@common
def search(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(help='Words, "a phrase", or, -word (web search syntax).')],
    user: Annotated[str | None, typer.Option("--user", help="Only this user's messages.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this session's messages.")] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's sessions.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Hits to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    all_tenants: AllTenants = False,
) -> None:
    """Search what messages say (ranked, with snippets; sealed messages are not searchable)."""
    hits = _run(
        ctx,
        lambda s: s.search(
            query, user_id=user, session_id=session, agent_name=agent, limit=limit, all_tenants=all_tenants
        ),
    )
    if as_json:
        _print_json([asdict(h) | {"snippet": h.marked("[", "]")} for h in hits])
        return
    if not hits:
        out.print("no messages match")
        raise typer.Exit(1)
    for h in hits:
        snippet = safe(h.snippet, oneline=True).replace(HIT_START, "[bold yellow]").replace(HIT_END, "[/]")
        out.print(
            f"[dim]{safe(h.session_id, oneline=True)} #{h.seq} {safe(h.role, oneline=True)} "
            f"{safe(h.user_id, oneline=True)} {_when(h.created_at)}[/]\n  {snippet}"
        )


@search_index_app.command("create")
@common
def search_index_create(ctx: typer.Context) -> None:
    """Build the full-text index (CREATE INDEX CONCURRENTLY: appends go on meanwhile). Every
    append then pays for indexing what it writes."""
    with _progress(None, "building the search index"):
        built = _run(ctx, lambda s: s.create_search_index())
    out.print("built the search index" if built else "the search index is already there")


@search_index_app.command("drop")
@common
def search_index_drop(ctx: typer.Context) -> None:
    """Drop the full-text index: appends stop paying for it; searches read every message."""
    dropped = _run(ctx, lambda s: s.drop_search_index())
    out.print("dropped the search index" if dropped else "there was no search index")


@search_index_app.command("status")
@common
def search_index_status(ctx: typer.Context) -> None:
    """Say whether the full-text index is built (exit code 0) or not (3)."""
    if _run(ctx, lambda s: s.search_index()):
        out.print("the search index is built")
        return
    out.print("no search index: searches read every message of their scope (`convostore search-index create`)")
    raise typer.Exit(3)


@sessions_app.command("branches")
@common
def sessions_branches(
    ctx: typer.Context,
    session_id: Annotated[str, typer.Argument(help="The session whose branches to list.")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List a session's branches: each one's parent, where it was forked, its own messages."""
    branches = _run(ctx, lambda s: s.list_branches(session_id))
    if as_json:
        _print_json([asdict(b) for b in branches])
        return
    table = _keep_whole(Table("branch", "parent", "forked at", "own messages", "created"), "created")
    for b in branches:
        table.add_row(
            safe(b.name, oneline=True),
            safe(b.parent or "", oneline=True),
            "" if b.fork_seq is None else f"#{b.fork_seq}",
            str(b.messages),
            _when(b.created_at),
        )
    out.print(table)


class UsageBy(enum.StrEnum):
    session = "session"
    user = "user"
    agent = "agent"
    day = "day"


@app.command()
@common
def stats(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
    all_tenants: AllTenants = False,
    usage: Annotated[bool, typer.Option("--usage", help="Model usage (tokens, requests) instead.")] = False,
    by: Annotated[
        UsageBy, typer.Option("--by", help="Usage totals per session, user, agent or UTC day.")
    ] = UsageBy.day,
    since: Annotated[
        str | None, typer.Option("--since", metavar="DURATION", help="Usage of the last DURATION only (7d, 12h...).")
    ] = None,
) -> None:
    """Sessions, messages, per-agent totals, table and index sizes, oldest and newest activity;
    with --usage, the model usage recorded per turn, summed --by session, user, agent or day."""
    if usage:
        _usage(ctx, by.value, None if since is None else parse_duration(since, "--since"), as_json, all_tenants)
        return
    report = _run(ctx, lambda s: s.stats(all_tenants=all_tenants))
    if as_json:
        _print_json(asdict(report))
        return
    out.print(
        f"sessions {report.sessions}  messages {report.messages}  users {report.users}  "
        f"with expiry {report.sessions_with_expiry}\n"
        f"oldest session {_when(report.oldest_session)}  newest activity {_when(report.newest_activity)}"
    )
    agents = Table("agent", "sessions", "messages", title="by agent")
    for a in report.by_agent:
        agents.add_row(safe(a.agent_name, oneline=True), str(a.sessions), str(a.messages))
    out.print(agents)
    sizes = Table("table", "table size", "index size", title="storage")
    for t in report.tables:
        sizes.add_row(safe(t.name, oneline=True), _size(t.table_bytes), _size(t.index_bytes))
    out.print(sizes)


def _usage(ctx: typer.Context, by: str, since: timedelta | None, as_json: bool, all_tenants: bool) -> None:
    start = None if since is None else datetime.now(UTC) - since
    totals = _run(ctx, lambda s: s.usage(by=by, since=start, all_tenants=all_tenants))
    if as_json:
        _print_json([asdict(t) for t in totals])
        return
    columns = ["tenant"] if all_tenants else []
    table = Table(*columns, by, "turns", "requests", "input", "cached", "output", "reasoning", "time", title="usage")
    for t in totals:
        cells = [str(n) for n in (t.turns, t.requests, t.input_tokens, t.cached_tokens, t.output_tokens)]
        table.add_row(
            *([safe(t.tenant, oneline=True)] if all_tenants else []),
            safe(t.key, oneline=True),
            *cells,
            str(t.reasoning_tokens),
            f"{t.duration:.1f} s",
        )
    out.print(table)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# -- serving -----------------------------------------------------------------------------------


@app.command()
@common
def serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", envvar="CONVOSTORE_HOST", show_envvar=True, help="Address to listen on.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="CONVOSTORE_PORT", show_envvar=True, min=1, max=65535, help="Port.")
    ] = 8080,
) -> None:
    """Serve the HTTP API (/v1; its OpenAPI at /openapi.json) and the conversation browser (/ui)
    until interrupted; needs the `server` extra. Applies pending migrations first. Clients
    authenticate with keys made by `convostore keys create`."""
    try:
        from .server import serve as run_server
    except ImportError as exc:
        err.print(f"[red]error:[/] convostore serve needs: pip install 'convostore[server]' ({safe(str(exc))})")
        raise typer.Exit(1) from None
    opts: _Options = ctx.obj
    _database(opts, always=True)  # a server's stderr is its log: say where its data is
    for m in _run(ctx, lambda s: s.migrate(), migrations=None):
        err.print(f"applied {m.version:04d}_{m.name}")
    run_server(
        database_url=opts.database_url, schema=opts.schema, tenant=opts.tenant, host=host, port=port, debug=opts.debug
    )


# -- export / import --------------------------------------------------------------------------


@app.command("export")
@common
def export_(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's sessions.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this session.")] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (atomically) instead of stdout ('-').")
    ] = None,
    all_tenants: AllTenants = False,
) -> None:
    """Write sessions and messages as JSON Lines (streaming; lossless; see `import`).

    The last line is the end line (counts and a SHA-256 of the lines before it) that `import`
    checks. A file is written under a temporary name and renamed once complete: an export
    stopped part way (an error, Ctrl-C, SIGTERM) leaves no file behind.
    """
    if user is not None and session is not None:
        raise typer.BadParameter("give --user or --session, not both", param_hint="--user/--session")
    import contextlib
    import signal

    from .transfer import ExportTally, export_jsonl, write_export

    to_file = output is not None and str(output) != "-"
    existed = to_file and output is not None and output.exists()
    tally = ExportTally()
    signals: list[signal.Signals] = []

    async def work(store: PostgresSessionStore) -> None:
        # SIGTERM stops the export as Ctrl-C does (asyncio.run turns SIGINT into a
        # cancellation), so that the temporary file is removed on the way out.
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None

        def stop() -> None:
            signals.append(signal.SIGTERM)
            task.cancel()

        with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
            loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            if to_file:
                assert output is not None
                await write_export(
                    store, output, user_id=user, session_id=session, all_tenants=all_tenants, tally=tally
                )
                return
            lines = export_jsonl(store, user_id=user, session_id=session, all_tenants=all_tenants, tally=tally)
            async for line in lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
        finally:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        _run(ctx, work)
    except (KeyboardInterrupt, asyncio.CancelledError):
        got = signals[0] if signals else signal.SIGINT
        if not to_file:
            lost = "the output stops there, without its end line (import refuses it)"
        else:
            lost = f"{safe(str(output), oneline=True)} {'keeps its previous content' if existed else 'was not written'}"
        err.print(
            f"export interrupted by {got.name} after {tally.sessions} sessions and {tally.messages} messages"
            f" ({tally.lines} lines): {lost}"
        )
        raise typer.Exit(128 + got.value) from None
    err.print(
        f"exported {tally.lines + 1} lines: {tally.sessions} sessions, {tally.counts['branch']} branches,"
        f" {tally.messages} messages and the end line",
        style="dim",
    )


def _lines(path: Path) -> Iterator[str]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                reason = f"not UTF-8 text (byte {exc.start}); is this a convostore export?"
                raise ImportFileError(number, reason) from None


@app.command("import")
@common
def import_(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A file from `export`.")],
    skip_conflicts: Annotated[
        bool,
        typer.Option(
            "--skip-conflicts",
            help="Skip (and list) rows that disagree with what is stored instead of refusing the file.",
        ),
    ] = False,
    allow_partial: Annotated[
        bool,
        typer.Option(
            "--allow-partial",
            help="Import a file without the end line an export writes last (cut short, or from an older"
            " convostore) as far as it goes.",
        ),
    ] = False,
) -> None:
    """Import a JSON Lines export in one transaction; rows already stored identically are skipped.

    Creates the schema if it does not exist yet (a restore into a new database).

    The file must end with its end line, and match its counts and checksum: a file cut short
    or changed after export is refused (--allow-partial takes one without an end line).
    A row that disagrees with what is stored (a session of another user, another message
    under a stored id or seq) is a conflict: the file is refused and nothing is written,
    unless --skip-conflicts is given. Nothing is ever written into another user's session.
    """
    from .transfer import import_jsonl

    async def work(store: PostgresSessionStore) -> Any:
        with _progress(None, "importing") as progress:
            task = progress.add_task("import", total=None)
            return await import_jsonl(
                store,
                _lines(path),
                on_conflict="skip" if skip_conflicts else "error",
                on_line=lambda n: progress.update(task, completed=n),
                allow_partial=allow_partial,
            )

    report = _run(ctx, work, migrations=True)  # a restore may go into a new schema
    out.print(
        f"imported {report.sessions_added} of {report.sessions_read} sessions and "
        f"{report.messages_added} of {report.messages_read} messages "
        f"({report.sessions_present} sessions and {report.messages_present} messages were already present)"
    )
    if not report.verified:
        err.print(f"warning: {safe(str(path), oneline=True)} has no end line: it may have been cut short")
    if report.conflicts:
        out.print(
            f"skipped {len(report.conflicts)} conflicting rows and {report.messages_skipped} messages of conflicting"
            " sessions:"
        )
        for line, reason in report.conflicts:
            out.print(f"  line {line}: {safe(reason, oneline=True)}")


def main() -> None:
    """Console-script entry point."""
    app()
