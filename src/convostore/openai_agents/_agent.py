"""``SessionAgent``: the seed's agent wrapper, working: history reaches the model."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from agents import Agent, Runner
from agents.result import RunResultBase, RunResultStreaming
from openai.types.responses import ResponseTextDeltaEvent

from .. import _validate as check
from ..models import TurnUsage
from ..store import PostgresSessionStore
from ..windows import Window
from ._session import PostgresSession


class SessionAgent:
    """Runs an ``Agent`` with its conversation kept in a :class:`PostgresSessionStore`.

    History reaches the model through the SDK's own session mechanism (``session=``), not
    through ``context``, which the model never sees. ``current_session_id`` is the session
    of the latest run, so a conversation continues with ``run(text, session_id=agent.current_session_id)``;
    continuing it without a *user_id* keeps the user it was started with.

    Each turn's usage (requests, input, output, reasoning and cached tokens, the model, the
    duration) is recorded with the session (``store.usage(...)`` sums it); a streamed turn's
    when :meth:`stream_text` ends, or by :meth:`record_usage` for :meth:`run_streamed`.
    *window* is the sessions' history window (:class:`~convostore.windows.Window`).
    """

    def __init__(
        self, agent: Agent[Any], store: PostgresSessionStore, *, window: Window | None = None, **runner_kwargs: Any
    ) -> None:
        self.agent = agent
        self.store = store
        self.window = window
        self.current_session_id: str | None = None
        self.current_user_id: str | None = None
        self._runner_kwargs = runner_kwargs

    def session(self, session_id: str | None = None, user_id: str | None = None) -> PostgresSession:
        """The SDK session for *session_id* (a new id when ``None``), owned by *user_id* (by
        default the user of the current session when continuing it, else ``"default"``);
        sets ``current_session_id`` and ``current_user_id``."""
        sid = check.identifier(session_id, "session_id") if session_id is not None else str(uuid.uuid4())
        if user_id is None:
            user_id = self.current_user_id if sid == self.current_session_id and self.current_user_id else "default"
        session = PostgresSession(
            sid, store=self.store, user_id=user_id, agent_name=self.agent.name, window=self.window
        )
        self.current_session_id, self.current_user_id = sid, session.user_id
        return session

    async def run(self, user_input: str, session_id: str | None = None, user_id: str | None = None) -> str:
        """Run one turn and return the final output as text."""
        session = self.session(session_id, user_id)
        started = time.monotonic()
        result = await Runner.run(self.agent, user_input, session=session, **self._runner_kwargs)
        await self.record_usage(result, session, duration=time.monotonic() - started)
        return str(result.final_output)

    async def record_usage(
        self, result: RunResultBase, session: PostgresSession, *, duration: float | None = None
    ) -> None:
        """Record the usage of a finished run *result* of *session* (a streamed run's once
        its stream is consumed)."""
        usage = result.context_wrapper.usage
        model = self.agent.model if isinstance(self.agent.model, str) else getattr(self.agent.model, "model", None)
        await self.store.record_usage(
            session.session_id,
            TurnUsage(
                requests=usage.requests,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                reasoning_tokens=usage.output_tokens_details.reasoning_tokens or 0,
                cached_tokens=usage.input_tokens_details.cached_tokens or 0,
                model=model if isinstance(model, str) and model else None,
                duration=duration,
            ),
            branch=session.branch,
            user_id=session.user_id,
        )

    def run_streamed(
        self, user_input: str, session_id: str | None = None, user_id: str | None = None
    ) -> RunResultStreaming:
        """Start a streamed turn; consume ``stream_events()`` on the result."""
        session = self.session(session_id, user_id)
        return Runner.run_streamed(self.agent, user_input, session=session, **self._runner_kwargs)

    async def stream_text(
        self, user_input: str, session_id: str | None = None, user_id: str | None = None
    ) -> AsyncIterator[str]:
        """Run a streamed turn, yielding the answer's text as it arrives."""
        session = self.session(session_id, user_id)
        started = time.monotonic()
        result = Runner.run_streamed(self.agent, user_input, session=session, **self._runner_kwargs)
        async for event in result.stream_events():
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent):
                yield event.data.delta
        await self.record_usage(result, session, duration=time.monotonic() - started)
