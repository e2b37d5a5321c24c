"""LangChain: PostgresChatMessageHistory keeps LangChain's messages whole, sync and async."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from convostore import InvalidMessageType, NewMessage, PostgresSessionStore, SessionOwnershipError, Window
from convostore.langchain import PostgresChatMessageHistory

CONVERSATION: list[BaseMessage] = [
    SystemMessage(content="Be brief."),
    HumanMessage(content="What's the weather in Paris?", id="h1", additional_kwargs={"lang": "en"}),
    AIMessage(
        content="",
        tool_calls=[
            {"name": "weather", "args": {"city": "Paris"}, "id": "call_1"},
            {"name": "weather", "args": {"city": "Lyon"}, "id": "call_2"},
        ],
        usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
    ),
    ToolMessage(content="18C, sunny", tool_call_id="call_1", name="weather"),
    ToolMessage(content="21C", tool_call_id="call_2", name="weather", artifact={"raw": [1, 2]}),
    AIMessage(content=[{"type": "text", "text": "Sunny, 18C."}], response_metadata={"model": "m"}),
    ChatMessage(role="critic", content="good answer"),
    HumanMessage(content="Thanks! \x00 ☀️ <b>"),
]


async def test_messages_round_trip_losslessly(store: PostgresSessionStore) -> None:
    history = PostgresChatMessageHistory("lc-1", store=store, user_id="alice")
    await history.aadd_messages(CONVERSATION)
    got = await history.aget_messages()
    assert got == CONVERSATION
    # The columns are readable by everyone else (CLI, browser, search, other adapters).
    stored = await store.get_messages("lc-1")
    assert [m.role for m in stored] == ["system", "user", "assistant", "tool", "tool", "assistant", "item", "user"]
    assert stored[2].tool_calls is not None
    assert [c["function"]["name"] for c in stored[2].tool_calls] == ["weather", "weather"]
    assert stored[3].tool_call_id == "call_1"
    assert stored[5].content == "Sunny, 18C."
    assert (await store.search("sunny"))[0].session_id == "lc-1"


def test_the_sync_methods_share_the_store(database_url: str, schema_name: str) -> None:
    store = PostgresSessionStore(database_url, schema=schema_name)
    history = PostgresChatMessageHistory("lc-sync", store=store, user_id="bob")
    history.add_user_message("hello")
    history.add_ai_message("hi there")
    assert [m.content for m in history.messages] == ["hello", "hi there"]
    history.clear()
    assert history.messages == []


async def test_an_id_makes_a_retried_add_a_no_op(store: PostgresSessionStore) -> None:
    history = PostgresChatMessageHistory("lc-2", store=store)
    message = HumanMessage(content="once", id="m-1")
    await history.aadd_messages([message])
    await history.aadd_messages([message])
    assert await history.aget_messages() == [message]


async def test_the_latest_n_never_parts_a_call_from_its_output(store: PostgresSessionStore) -> None:
    history = PostgresChatMessageHistory("lc-3", store=store, limit=3)
    await history.aadd_messages(CONVERSATION[1:6])
    # The latest 3 would start at the second tool output, without the call: it starts after.
    assert [m.type for m in await history.aget_messages()] == ["ai"]
    turns = PostgresChatMessageHistory("lc-3", store=store, window=Window(turns=1))
    assert len(await turns.aget_messages()) == 5


async def test_foreign_messages_read_as_the_nearest_langchain_ones(store: PostgresSessionStore) -> None:
    await store.add_messages(
        "lc-4",
        [
            NewMessage("user", "from the store API"),
            NewMessage(
                "assistant",
                "",
                tool_calls=[{"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}],
            ),
            NewMessage("tool", "done", tool_call_id="c9"),
            NewMessage("item", "", raw={"type": "reasoning", "summary": []}),
        ],
        user_id="default",
    )
    got = await PostgresChatMessageHistory("lc-4", store=store).aget_messages()
    assert [type(m).__name__ for m in got] == ["HumanMessage", "AIMessage", "ToolMessage"]
    assert isinstance(got[1], AIMessage)
    assert got[1].tool_calls[0]["args"] == {"x": 1}


async def test_misuse_gets_our_errors(store: PostgresSessionStore) -> None:
    history = PostgresChatMessageHistory("lc-5", store=store, user_id="alice")
    with pytest.raises(InvalidMessageType):
        await history.aadd_messages(["not a message"])  # type: ignore[list-item]
    await history.aadd_messages([HumanMessage(content="mine")])
    with pytest.raises(SessionOwnershipError):
        await PostgresChatMessageHistory("lc-5", store=store, user_id="mallory").aget_messages()


# LangChain 1.x deprecates it in favour of LangGraph's persistence; it is still the runner
# built on chat message histories.
@pytest.mark.filterwarnings("ignore:RunnableWithMessageHistory is deprecated")
async def test_langchains_runnable_with_history_remembers_across_turns(store: PostgresSessionStore) -> None:
    """LangChain's own runner: RunnableWithMessageHistory around an offline chat model."""
    seen: list[list[BaseMessage]] = []

    class Recording(FakeMessagesListChatModel):
        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
            seen.append(list(messages))
            return super()._generate(messages, *args, **kwargs)

    model = Recording(responses=[AIMessage(content="Nice to meet you, Ada."), AIMessage(content="You are Ada.")])
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    chain = RunnableWithMessageHistory(
        prompt | model,
        lambda session_id: PostgresChatMessageHistory(session_id, store=store, user_id="ada"),
        input_messages_key="question",
        history_messages_key="history",
    )
    config: Any = {"configurable": {"session_id": "lc-run"}}
    await chain.ainvoke({"question": "My name is Ada."}, config=config)
    answer = await chain.ainvoke({"question": "What is my name?"}, config=config)
    assert answer.content == "You are Ada."
    assert [m.content for m in seen[1]] == ["My name is Ada.", "Nice to meet you, Ada.", "What is my name?"]
    assert len(await store.get_messages("lc-run")) == 4
