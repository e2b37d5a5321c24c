"""The convostore demo: an agent that remembers across processes.

Turn 1 ("My name is Alice") runs in this process; turn 2 ("What's my name?") runs in a NEW
Python process that knows only the session id, so the answer can only come from history
stored in PostgreSQL. Then the stored conversation is shown.

With ``OPENAI_API_KEY`` set it uses a real model (``CONVOSTORE_DEMO_MODEL``, default
``gpt-4.1-mini``; ``OPENAI_BASE_URL`` for any compatible server, spoken to through chat
completions). Without one it uses convostore's offline model, which answers only from the
history it receives.

Run it with ``./dev demo`` (or ``python -m convostore.demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .embedded import describe_database
from .models import Session
from .store import PostgresSessionStore

console = Console()
err = Console(stderr=True, highlight=False)
USER_ID = "alice@example.com"
SCHEMA = os.environ.get("CONVOSTORE_SCHEMA", "convostore_demo")


def _agent() -> tuple[object, str]:
    from agents import Agent, set_default_openai_api, set_tracing_disabled

    from .openai_agents import OfflineModel

    instructions = "You are a helpful assistant. Use the conversation history to answer."
    if os.environ.get("OPENAI_API_KEY"):
        if os.environ.get("OPENAI_BASE_URL"):
            set_default_openai_api("chat_completions")
            set_tracing_disabled(True)
        model = os.environ.get("CONVOSTORE_DEMO_MODEL", "gpt-4.1-mini")
        return Agent(name="MemoryAgent", instructions=instructions, model=model), f"real model: {model}"
    set_tracing_disabled(True)
    return (
        Agent(name="MemoryAgent", instructions=instructions, model=OfflineModel()),
        "offline model (no OPENAI_API_KEY): it answers only from the history it is given",
    )


async def _turn(text: str, session_id: str | None) -> tuple[str, str]:
    from agents import Agent

    from .openai_agents import SessionAgent

    agent, label = _agent()
    assert isinstance(agent, Agent)
    async with PostgresSessionStore(schema=SCHEMA) as store:
        runner = SessionAgent(agent, store)
        answer = await runner.run(text, session_id=session_id, user_id=USER_ID)
        assert runner.current_session_id is not None
        return runner.current_session_id, f"{answer}\n  ({label})"


def _show(session: Session) -> None:
    table = Table(title=f"session {session.id} (user {session.user_id}, agent {session.agent_name})")
    for column in ("seq", "role", "content", "created_at (UTC)"):
        table.add_column(column)
    colours = {"user": "cyan", "assistant": "green", "tool": "magenta"}
    for m in session.messages:
        content = m.content if len(m.content) < 90 else m.content[:87] + "..."
        table.add_row(
            str(m.seq),
            f"[{colours.get(m.role, 'white')}]{m.role}[/]",
            escape(content),
            m.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)


def _cli() -> str:
    """How to run this installation's ``convostore`` command from the current directory."""
    script = Path(sys.executable).parent / "convostore"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m convostore"
    try:
        shown = script.relative_to(Path.cwd())
    except ValueError:
        return shlex.quote(str(script))
    return shlex.quote(str(shown))


async def _main() -> int:
    # The library's rule (DATABASE_URL, else the embedded server), which the CLI hint below follows too.
    err.print(f"[dim]{escape(describe_database(os.environ.get('DATABASE_URL') or None))}[/]", soft_wrap=True)
    console.rule("convostore demo")
    console.print(f"[bold]turn 1[/] (this process, pid {os.getpid()}): [cyan]My name is Alice[/]")
    session_id, answer = await _turn("My name is Alice", None)
    console.print(f"  -> {escape(answer)}")

    console.print("[bold]turn 2[/] (a new process, given only the session id): [cyan]What's my name?[/]")
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "convostore.demo", "--second-turn", session_id, stdout=subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        console.print("[red]turn 2 failed[/] (its log is above)")
        return 1
    console.print(f"  -> {escape(out.decode().strip())}")

    async with PostgresSessionStore(schema=SCHEMA) as store:
        session = await store.get_session(session_id)
        assert session is not None
        _show(session)
        [usage] = await store.usage(by="session", session_id=session_id)
        console.print(
            f"usage recorded with the session: {usage.turns} turns, {usage.requests} model requests, "
            f"{usage.input_tokens} input and {usage.output_tokens} output tokens"
        )
        recent = await store.get_user_sessions(USER_ID, limit=5, with_messages=False)
        console.print(
            f"{USER_ID} has {len(recent)} recent session(s) in schema {SCHEMA!r}; "
            "run the demo again and the list grows (the data persists)."
        )
        hint = f"{_cli()} sessions show {shlex.quote(session_id)} --schema {shlex.quote(SCHEMA)}"
        console.print(f"[dim]see it again: {escape(hint)}[/]", soft_wrap=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m convostore.demo``."""
    parser = argparse.ArgumentParser(prog="python -m convostore.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--second-turn", metavar="SESSION_ID", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Warnings and errors only: retries and migrations are logged at INFO.
    logging.basicConfig(level=logging.WARNING, format="  [log] %(name)s: %(message)s", stream=sys.stderr)
    if args.second_turn:
        _, answer = asyncio.run(_turn("What's my name?", args.second_turn))
        print(answer)
        return 0
    return asyncio.run(_main())


if __name__ == "__main__":
    sys.exit(main())
