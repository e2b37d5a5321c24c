"""The OpenAPI document says exactly what the server does: schemathesis generates requests
from ``/openapi.json`` (valid ones and invalid ones) and sends them to the ASGI application
in-process, with a valid API key, running every check it has (no server error, documented
status codes, content types and response schemas, valid data accepted, invalid data refused,
authentication not ignored ...).

Bounded and repeatable: a fixed number of examples per operation and mode, derandomized.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.errors import InvalidSchema
from schemathesis.core.result import Err
from schemathesis.python.asgi import shutdown_lifespans

from convostore import NewMessage, PostgresSessionStore, SessionCursor
from convostore.keys import create_key
from convostore.server import create_app
from convostore.server.paging import encode_cursor

EXAMPLES = 30

# A cursor as the server hands them out: opaque to the document, so its values come from here.
schemathesis.openapi.format(
    "convostore-cursor",
    st.builds(
        lambda when, sid: encode_cursor(SessionCursor(when, sid)),
        st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
        st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), min_size=1, max_size=40).filter(
            str.strip
        ),
    ),
)


async def _seed(url: str, schema: str) -> str:
    """A user's key, and a little data for it to find."""
    async with PostgresSessionStore(url, schema=schema) as store:
        token, _ = await create_key(store, name="schemathesis", user="alice")
        session = await store.create_session("alice", "support", {"title": "seeded"}, session_id="seeded")
        calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        await store.add_messages(
            session.id,
            [NewMessage("user", "a refund please"), NewMessage("assistant", "", tool_calls=calls)],
        )
        await store.add_messages(session.id, [NewMessage("tool", "done", tool_call_id="c1")])
        return token


def test_the_api_does_what_its_openapi_document_says(database_url: str, schema_name: str) -> None:
    token = asyncio.run(_seed(database_url, schema_name))
    store = PostgresSessionStore(database_url, schema=schema_name, apply_migrations=False)
    # schemathesis tries invalid keys on every operation: no failure limit here (tested elsewhere).
    app = create_app(store, owns_store=True, failed_auth_burst=1e9)
    # A body past the size limit is refused with 413 before it is read: a refusal too.
    refused = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
    config = schemathesis.Config.from_dict(
        {
            "headers": {"Authorization": f"Bearer {token}"},
            "checks": {
                "negative_data_rejection": {"expected-statuses": refused},
                # A 400 is the library's refusal of a combination the document cannot express
                # (a window read paging forwards with after_seq); what the schema can say
                # (types, sizes, required fields) is refused with 422, which stays a failure.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "3xx", "400", "401", "403", "404", "409", "429", "5xx"]
                },
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    failures: list[str] = []
    unreachable: list[str] = []
    tried = 0
    try:
        for result in schema.get_all_operations():
            if isinstance(result, Err):
                raise result.err()  # the document itself is invalid
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                @given(case=operation.as_strategy(generation_mode=mode))
                def check(case: schemathesis.Case[Any]) -> None:
                    case.call_and_validate()

                tried += 1
                try:
                    check()
                except InvalidSchema as exc:
                    # The generator's own limit (it cannot draw an invalid body of this shape),
                    # not the server's: said, and the operation's valid requests still checked.
                    if mode is GenerationMode.NEGATIVE and "Cannot generate" in str(exc):
                        unreachable.append(operation.label)
                    else:
                        failures.append(f"{operation.label} ({mode.value}): {exc}")
                except Unsatisfiable:
                    # Nothing to break: an operation without parameters or body has no invalid form.
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    assert not operation.query, operation.label
                    assert not operation.body, operation.label
                except (
                    Exception,
                    ExceptionGroup,
                ) as exc:  # every operation is tried; all failures are reported together
                    failures.append(f"{operation.label} ({mode.value}): {exc}")
    finally:
        shutdown_lifespans()  # the application's shutdown: its store closes
    assert tried >= 20  # every operation, both ways
    assert not failures, "\n\n".join(failures)
    assert len(unreachable) <= 1, f"invalid requests could not be generated for {unreachable}"
