"""The package's layout: its modules import one another in layers, with no circle, and none of
them imports the package root (``convostore/__init__.py`` only re-exports)."""

from __future__ import annotations

import grimp


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("convostore", include_external_packages=False)


def _circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_the_package_root() -> None:
    assert _graph().find_modules_that_directly_import("convostore") == set()


def test_the_import_graph_has_no_circle() -> None:
    assert _circles(_graph()) == []


def test_the_store_knows_nothing_of_the_jobs_built_on_it() -> None:
    graph = _graph()
    for job in ("convostore.cleanup", "convostore.transfer", "convostore.sync", "convostore.cli"):
        assert not graph.chain_exists(importer="convostore.store", imported=job), job
