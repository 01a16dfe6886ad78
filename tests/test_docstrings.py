"""Issue 17: at least 90% of the public functions, classes and methods of align/, agents/,
retrieval/ and serve/ have a docstring.

Public: a name without a leading underscore, at module level or in a public class (functions
nested in functions are not counted). Counted with ``ast``, so nothing is imported.
"""
from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGES = ("align", "agents", "retrieval", "serve")
AIM = 0.90


def public_definitions(source: str) -> list[tuple[str, int, bool]]:
    """``(qualified name, line, has a docstring)`` of each public function, class and method."""
    out: list[tuple[str, int, bool]] = []

    def visit(body, prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                out.append((prefix + node.name, node.lineno, ast.get_docstring(node) is not None))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, f"{prefix}{node.name}.")

    visit(ast.parse(source).body, "")
    return out


def test_the_counter_sees_functions_classes_and_methods_and_skips_private_ones():
    found = public_definitions('def a():\n    "doc"\n    def inner(): pass\n'
                               'class B:\n    def m(self): pass\n    def _p(self): pass\n    async def n(self):\n        "d"\n'
                               'class _C:\n    def hidden(self): pass\n')
    assert [(name, doc) for name, _, doc in found] == [("a", True), ("B", False), ("B.m", False), ("B.n", True)]


def test_most_public_definitions_have_a_docstring():
    rows = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO)
            rows += [(f"{rel}:{line} {name}", doc) for name, line, doc in public_definitions(path.read_text())]
    missing = [where for where, doc in rows if not doc]
    share = 1 - len(missing) / len(rows)
    print(f"{len(rows) - len(missing)} of {len(rows)} public definitions documented ({share:.1%})")
    assert share >= AIM, f"{share:.1%} < {AIM:.0%}; without a docstring:\n  " + "\n  ".join(missing)
