"""Which framework tests apply to convostore, and what is known about those that fail.

Keys are node ids relative to the test root: "file::test" covers every parametrization;
fnmatch patterns (``*``) work too. Tests not listed run; one that builds no convostore store
is reported apart ("framework-only code paths").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Classification:
    """One suite's classification."""

    name: str
    adapter: str
    adapter_short: str
    not_applicable: dict[str, str] = field(default_factory=dict)
    known_differences: dict[str, str] = field(default_factory=dict)


# -- Google ADK: tests/unittests/sessions/test_session_service.py --------------------------------

_S = "tests/unittests/sessions/test_session_service.py"
_DB = (
    "DatabaseSessionService internals: SQLAlchemy engine options and URL errors, its read-only "
    "session factory, schema TypeDecorators, prepare_tables, row locks, rollback and commit "
    "spies, storage revision markers (its stale-writer check), rows edited through SQLAlchemy"
)
_SQLITE = "SqliteSessionService internals: sqlite URLs and files, sqlite3 errors, its stale-writer check"
_INMEM = (
    "InMemorySessionService internals: its sessions/user_state dicts, copy depth (light-copy "
    "feature), object-identity deduplication, the *_sync methods only it has; the test builds "
    "InMemorySessionService itself instead of taking the contract fixture"
)
_BUILT_IN = (
    "parametrized over ADK's own backends (get_session_service builds InMemory/Database/Sqlite "
    "services) instead of taking the contract fixture; the behaviour is covered for convostore "
    "in tests/test_adk.py"
)

ADK = Classification(
    name="Google ADK",
    adapter="convostore.adk.PostgresSessionService (ADK's BaseSessionService)",
    adapter_short="PostgresSessionService",
    not_applicable={
        f"{_S}::test_database_session_service_*": _DB,
        f"{_S}::test_session_type_decorators_opt_into_statement_cache": _DB,
        f"{_S}::test_dynamic_json_column_statement_is_cacheable": _DB,
        f"{_S}::test_create_session_concurrent_same_id_raises_already_exists_error": _DB,
        f"{_S}::test_append_event_to_stale_session": _DB,
        f"{_S}::test_append_event_raises_if_*_row_missing": _DB,
        f"{_S}::test_append_event_concurrent_stale_sessions_reject_stale_writer": _DB,
        f"{_S}::test_append_event_allows_*": _DB,
        f"{_S}::test_*_calls_rollback_on_commit_failure": _DB,
        f"{_S}::test_*_reads_storage_revision_before_commit": _DB,
        f"{_S}::test_service_recovers_after_multiple_failures": _DB,
        f"{_S}::test_concurrent_prepare_tables_no_race_condition": _DB,
        f"{_S}::test_*prepare_tables_*": _DB,
        f"{_S}::test_get_or_create_state_*": _DB,
        f"{_S}::test_create_session_sequential_same_app_name": _DB,
        f"{_S}::test_append_event_locks_only_scopes_with_deltas": _DB,
        f"{_S}::test_sqlite_*": _SQLITE,
        f"{_S}::test_create_session_with_padded_duplicate_id_raises_error": _INMEM,
        f"{_S}::test_create_session_with_blank_id_generates_one": _INMEM,
        f"{_S}::test_append_event_when_session_is_same_ref_as_storage_session": _INMEM,
        f"{_S}::test_get_user_state_copies_to_session_state_depth": _INMEM,
        f"{_S}::test_*_session*_sync_*": _INMEM,
        f"{_S}::test_append_event_is_idempotent_for_same_event_id": _INMEM,
        f"{_S}::test_append_different_events_not_deduplicated": _INMEM,
        f"{_S}::test_vertex_ai_session_service_raises_not_implemented_for_get_user_state": (
            "VertexAiSessionService's get_user_state (not implemented there)"
        ),
        f"{_S}::test_append_event_with_non_serializable_state_delta": _BUILT_IN,
        f"{_S}::test_append_event_to_deleted_session_raises_session_not_found": _BUILT_IN,
        f"{_S}::test_get_session_orders_tied_timestamps_by_id": (
            "parametrized over ADK's own backends; and on purpose not convostore's order: ADK's "
            "database service breaks timestamp ties by event id, convostore returns events in the "
            "order they were appended, whatever their timestamps and ids (tests/test_adk.py)"
        ),
    },
    known_differences={},
)

# -- LangChain ---------------------------------------------------------------------------------

_CORE = "tests/unit_tests/chat_history/test_chat_history.py"
_LCPG = "tests/unit_tests/v1/test_chat_histories.py"

LANGCHAIN = Classification(
    name="LangChain",
    adapter="convostore.langchain.PostgresChatMessageHistory (LangChain's BaseChatMessageHistory)",
    adapter_short="PostgresChatMessageHistory",
    not_applicable={
        f"{_CORE}::test_chat_history_deprecated[InMemory*]": (
            "the wording of InMemoryChatMessageHistory's docstring (its deprecation notice and link), not behaviour"
        ),
    },
    known_differences={},
)
