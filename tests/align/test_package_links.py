"""The package links docs/architecture.md draws: retrieval reaches align only for its errors, and
no import of retrieval (or of align's errors) loads torch (issue 17, item 5)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", ["import retrieval", "import retrieval.cli", "from retrieval import Retriever",
                                  "from align import KeelError", "import align.config, align.errors"])
def test_importing_retrieval_or_aligns_errors_does_not_import_torch(code):
    mods = _modules_after(code)
    assert "torch" not in mods, code
    assert not {m for m in mods if m.startswith("align.")} - {"align.errors", "align.config"}, code


def test_align_still_exports_its_loaders():
    mods = _modules_after("from align import load_policy, Manifest, resolve_model, save_checkpoint")
    assert "align.models" in mods and "torch" in mods
