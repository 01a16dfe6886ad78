import json

import pytest

from align.errors import ConfigError
from serve.cli import main, serve_config
from serve.feedback import FeedbackStore
from tests.conftest import REPO


def test_config_file_then_flags():
    cfg = serve_config(["--config", str(REPO / "configs" / "serve.yaml"), "--port", "9999", "--no-agent", "--batch"])
    assert cfg.port == 9999 and cfg.agent.enabled is False and cfg.batch is True and cfg.host == "127.0.0.1"
    assert serve_config([]).feedback_db == "runs/feedback.db"


def test_bad_config_names_the_key(tmp_path):
    bad = tmp_path / "serve.yaml"
    bad.write_text("prot: 80\n")
    with pytest.raises(ConfigError, match="prot"):
        serve_config(["--config", str(bad)])


def test_export_feedback_command(tmp_path, capsys):
    store = FeedbackStore(tmp_path / "fb.db")
    store.add_feedback("rating", session_id="s", checkpoint_id="c", prompt=[{"role": "user", "content": "q"}],
                       completion="a", label=True)
    store.close()
    assert main(["export-feedback", "--db", str(tmp_path / "fb.db"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out)["unpaired_rows"] == 1
    assert main(["export-feedback", "--db", str(tmp_path / "none.db"), "--out", str(tmp_path / "o2")]) == 2
    assert "none.db" in capsys.readouterr().err
