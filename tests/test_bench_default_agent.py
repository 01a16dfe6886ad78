"""The KB judge of the benchmarks and simulated users: a citation is "(source: NAME)", not any mention."""
import sys

from agents.tasks import cites
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

import bench_default_agent  # noqa: E402


def test_a_kb_answer_counts_only_a_citation_of_the_right_source():
    assert bench_default_agent.cites is cites
    assert cites("It binds names. (source: python-docs:global)", "python-docs:global")
    assert cites("It binds names. (source: python-docs:global § The global statement)", "python-docs:global")
    assert not cites("It binds names. (source: python-docs:globals)", "python-docs:global")
    # the source named only in a copied passage line of the observation is not a citation
    assert not cites("It binds names\n[2] (python-docs:global § The global statement) The global", "python-docs:global")
    assert not cites(None, "python-docs:global")
