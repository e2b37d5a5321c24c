"""An offline model that answers only from the conversation history it is given.

It lets the demo and the tests prove that history reaches the model without a network or an
API key: it knows nothing but the input items of the call. It remembers statements of the
form "my NAME is VALUE" and answers "what is my NAME?"; everything else gets a reply saying
how much history it saw. Every answer is labelled as coming from the offline model.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from agents.items import ModelResponse, TResponseInputItem, TResponseStreamEvent
from agents.testing import ModelCall, ModelStep, ScriptedModel, assistant_message
from agents.usage import Usage

from ..windows import estimate_tokens
from ._items import _text_of

LABEL = "[offline model]"
_FACT = re.compile(r"\bmy ([a-z][a-z ]{0,40}?) (?:is|was|are) ([^.!?\n]+)", re.IGNORECASE)
_QUESTION = re.compile(r"\bwhat(?:'s| is| was| are) my ([a-z][a-z ]{0,40}?)\s*\??\s*$", re.IGNORECASE)


def _user_texts(items: str | list[TResponseInputItem]) -> list[str]:
    if isinstance(items, str):
        return [items]
    texts = []
    for item in items:
        if isinstance(item, Mapping) and item.get("role") == "user":
            texts.append(_text_of(item.get("content")))
    return texts


def answer(items: str | list[TResponseInputItem]) -> str:
    """The offline model's reply to a call whose input is *items*."""
    texts = _user_texts(items)
    if not texts:
        return f"{LABEL} I was given no user message."
    *history, latest = texts
    facts: dict[str, str] = {}
    for text in history:
        for key, value in _FACT.findall(text):
            facts[key.strip().lower()] = value.strip()
    question = _QUESTION.search(latest.strip())
    if question:
        key = question.group(1).strip().lower()
        if key in facts:
            return f"{LABEL} Your {key} is {facts[key]}."
        return f"{LABEL} I don't know your {key}: nothing in the {len(history)} earlier messages I was given says."
    told = _FACT.findall(latest)
    if told:
        key, value = told[0]
        return f"{LABEL} Nice to meet you! I'll remember that your {key.strip().lower()} is {value.strip()}."
    return f"{LABEL} I saw {len(history)} earlier user messages in this conversation."


class OfflineModel(ScriptedModel):
    """A ``agents.models.interface.Model`` that needs no network (see the module docstring).

    Built on the SDK's deterministic ``ScriptedModel``, so plain and streamed runs behave as
    with any other model; ``calls`` records the input of every call.
    """

    def __init__(self) -> None:
        super().__init__()

    @staticmethod
    def _respond(call: ModelCall) -> ModelStep:
        reply = answer(call.input)
        # Usage as a model would report it, counted with convostore's estimate.
        given = json.dumps(call.input, default=str, ensure_ascii=False)
        usage = Usage(requests=1, input_tokens=estimate_tokens(given), output_tokens=estimate_tokens(reply))
        usage.total_tokens = usage.input_tokens + usage.output_tokens
        return ModelStep(output=[assistant_message(reply, item_id="msg_offline")], usage=usage)

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        self.enqueue(ModelStep.respond(self._respond))
        return await super().get_response(*args, **kwargs)

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        self.enqueue(ModelStep.respond(self._respond))
        async for event in super().stream_response(*args, **kwargs):
            yield event
