"""The SQL convostore sends, as files a reviewer reads: ``tests/sql/`` holds what every
statement (both shapes where distributed tables have their own), every function and every
migration renders to for schema ``s``, byte for byte. A change to any of them fails here
until its file is regenerated, so it shows in review as a change to that file:

    CONVOSTORE_UPDATE_GOLDEN=1 pytest tests/test_sql_golden.py

A released migration's file is never rewritten, not even then: its text must not change
(add a migration instead).
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from convostore import MIGRATIONS
from convostore._sql import (
    DISTRIBUTED,
    FIT_TO_CITUS,
    FUNCTIONS,
    STATEMENTS,
    Queries,
    in_schema,
    quote_ident,
    render,
)

pytestmark = pytest.mark.server_independent

GOLDEN = Path(__file__).parent / "sql"
SCHEMA = "s"
UPDATE = os.environ.get("CONVOSTORE_UPDATE_GOLDEN", "").lower() in ("1", "true", "yes")


def rendered() -> dict[str, str]:
    """Each golden file's path (under tests/sql/) and the text it must hold."""
    quoted = quote_ident(SCHEMA)
    single, distributed = render(SCHEMA), render(SCHEMA, distributed=True)
    files: dict[str, str] = {}
    for field in fields(Queries):
        files[f"statements/{field.name}.sql"] = getattr(single, field.name)
        if field.name in DISTRIBUTED:
            files[f"statements/{field.name}.distributed.sql"] = getattr(distributed, field.name)
    for name, text in FUNCTIONS.items():
        files[f"functions/{name}.sql"] = in_schema(text, quoted)
    files["functions/fit_to_citus.sql"] = in_schema(FIT_TO_CITUS, quoted)
    # A migration's text as rendered; it is sent statement by statement (Migration.statements).
    for migration in MIGRATIONS:
        files[f"migrations/{migration.version:04d}_{migration.name}.sql"] = in_schema(migration.sql, quoted)
    return files


def test_every_field_has_one_template() -> None:
    assert list(STATEMENTS) == [f.name for f in fields(Queries)]
    assert set(DISTRIBUTED) <= set(STATEMENTS)
    assert all(DISTRIBUTED[name] != STATEMENTS[name] for name in DISTRIBUTED)


def test_the_schema_is_the_only_placeholder() -> None:
    templates = [*STATEMENTS.values(), *DISTRIBUTED.values(), *FUNCTIONS.values(), FIT_TO_CITUS]
    templates += [m.sql for m in MIGRATIONS]
    for template in templates:
        assert set(re.findall(r"\{[^{}]*\}", template)) <= {"{s}", "{}"}, template[:200]
    for name, text in rendered().items():
        assert "{s}" not in text, name


def test_each_function_file_creates_that_function() -> None:
    for name, text in FUNCTIONS.items():
        assert len(re.findall(r"^CREATE OR REPLACE FUNCTION \{s\}\.(\w+)\(", text, re.MULTILINE)) == 1, name
        assert re.search(rf"^CREATE OR REPLACE FUNCTION \{{s\}}\.{name}\(", text, re.MULTILINE), name


def test_the_sql_sent_matches_its_golden_file() -> None:
    expected = rendered()
    stale = sorted(
        str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.sql") if str(p.relative_to(GOLDEN)) not in expected
    )
    drifted, frozen = [], []
    for name, text in expected.items():
        path = GOLDEN / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        if name.startswith("migrations/") and path.exists():
            frozen.append(name)
        elif UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        else:
            drifted.append(name)
    if UPDATE:
        for name in stale:
            (GOLDEN / name).unlink()
        stale = []
    assert not frozen, f"released migrations changed (add a new migration instead): {frozen}"
    regenerate = "review, then CONVOSTORE_UPDATE_GOLDEN=1 pytest tests/test_sql_golden.py"
    assert not drifted, f"SQL differs from tests/sql/: {drifted}; {regenerate}"
    assert not stale, f"tests/sql/ holds SQL no longer sent: {stale}; {regenerate}"
