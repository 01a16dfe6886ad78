"""Issue #21 item 8: a feedback database that is damaged, in a read-only folder, or on a full disk
gives a clear error naming the file (CLIs: one line, exit code 2; app: a short message, nothing
half-written), and an export reads a database it cannot write to."""
import json
import logging
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serve.cli import main as serve_main
from serve.feedback import FeedbackDBError, FeedbackStore, export_feedback
from tests.serve.app_driver import AppDriver

ROOT = Path(__file__).resolve().parents[2]
Q = [{"role": "user", "content": "q"}]


def fill(store, n=150):
    for i in range(n):
        rid = store.add_response("s", "ckpt", Q + [{"role": "user", "content": f"question {i}"}], f"answer {i} " * 20)
        store.add_feedback("rating", session_id="s", checkpoint_id="ckpt", prompt=[], completion="",
                           label=i % 2 == 0, response_id=rid)


@pytest.fixture(scope="module")
def good_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "fb.db"
    store = FeedbackStore(path)
    fill(store)
    store.close()
    return path


def garbage_middle(path):
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(random.Random(0).randbytes(3000))


def garbage_third(path):
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 3 + 123)
        f.write(random.Random(1).randbytes(5000))


def truncated(path):
    os.truncate(path, path.stat().st_size // 2)


def pages_zeroed(path):  # a page-aligned run of zeros, as a failed disk sector leaves it
    with open(path, "r+b") as f:
        f.seek(4096 * 6)
        f.write(bytes(4096 * 3))


@pytest.mark.parametrize("damage", [garbage_middle, garbage_third, truncated, pages_zeroed])
def test_a_damaged_database_is_refused_by_the_store_export_and_both_clis(good_db, tmp_path, damage, capsys):
    bad = tmp_path / "fb.db"
    shutil.copy(good_db, bad)
    damage(bad)
    with pytest.raises(FeedbackDBError, match="damaged") as e:
        FeedbackStore(bad)  # the app's store: no more writes to a damaged file
    assert str(bad) in str(e.value) and ".recover" in str(e.value)
    with pytest.raises(FeedbackDBError, match="damaged"):
        export_feedback(bad, tmp_path / "out")
    assert not (tmp_path / "out" / "kto.jsonl").exists()

    capsys.readouterr()
    assert serve_main(["export-feedback", "--db", str(bad), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err
    # The app refuses to start (before it loads a model) with the same one line.
    assert serve_main(["--feedback-db", str(bad), "--index", "none", "--checkpoint", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "damaged" in err and str(bad) in err

    from align.cli import main as align_main
    assert align_main(["retrain", "--from-feedback", str(bad), "--output_dir", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err
    assert "damaged" in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_stored_field_that_does_not_parse_is_damage_not_a_traceback(good_db, tmp_path):
    bad = tmp_path / "fb.db"
    shutil.copy(good_db, bad)
    db = sqlite3.connect(bad)
    db.execute("UPDATE responses SET prompt_json='[{\"role\": \"us' WHERE rowid=7")
    db.commit()
    db.close()
    with pytest.raises(FeedbackDBError, match="damaged"):
        export_feedback(bad, tmp_path / "out")


def corrupt_tables(path):
    """Overwrite every page after the first (the schema page) with garbage."""
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(random.Random(2).randbytes(path.stat().st_size - 4096))


def test_damage_met_by_a_write_mid_run_is_a_short_message_in_the_app_and_the_detail_in_the_log(
        tiny_model_dir, tmp_path, caplog):
    a = AppDriver(tiny_model_dir, tmp_path / "fb.db", ["A", "B"])
    a.ask("Q")
    a.store.close()  # the next write opens the file afresh, as another worker thread would
    corrupt_tables(tmp_path / "fb.db")
    with caplog.at_level(logging.ERROR, logger="keel.serve"):
        status = a.ask("Q2")
    assert "damaged" in status and "nothing was stored" in status and str(tmp_path) not in status
    assert str(tmp_path / "fb.db") in caplog.text and ".recover" in caplog.text
    with pytest.raises(FeedbackDBError, match="damaged"):  # and the store takes no further writes
        a.store.add_response("s", "ckpt", Q, "again")


def test_a_full_disk_is_a_clear_error_and_nothing_is_half_written(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db")
    fill(store, 3)
    before = store.counts()
    db = store._conn()
    # SQLite raises SQLITE_FULL when the file would grow past max_page_count: a full disk, simulated.
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(FeedbackDBError, match="disk is full") as e:
        store.add_response("s", "ckpt", Q, "x" * 30_000)
    assert str(tmp_path / "fb.db") in str(e.value) and e.value.kind == "full"
    with pytest.raises(FeedbackDBError, match="disk is full"):
        store.add_feedback("edit", session_id="s", checkpoint_id="ckpt", prompt=Q, completion="a",
                           edited="y" * 30_000)
    assert not db.in_transaction and store.counts() == before
    db.execute("PRAGMA max_page_count=1073741823")  # space freed: the store works again
    store.add_response("s", "ckpt", Q, "x" * 30_000)
    assert store.counts()["responses"] == before["responses"] + 1


def test_a_full_disk_in_the_app_is_a_short_message(tiny_model_dir, tmp_path, caplog):
    a = AppDriver(tiny_model_dir, tmp_path / "fb.db", ["A" * 20_000, "B" * 20_000])
    a.ask("Q")
    db = a.store._conn()
    db.execute(f"PRAGMA max_page_count={db.execute('PRAGMA page_count').fetchone()[0]}")
    with caplog.at_level(logging.ERROR, logger="keel.serve"):
        status = a.ask("Q2")
    assert "disk is full" in status and "nothing was stored" in status and str(tmp_path) not in status
    assert str(tmp_path / "fb.db") in caplog.text
    assert a.store.counts()["responses"] == 1


# -- read-only folders -----------------------------------------------------------------------------
READER = r"""
import json, sys
from serve.feedback import FeedbackDBError, FeedbackStore, export_feedback
from serve.cli import main
db, out = sys.argv[1], sys.argv[2]
res = {"rows": export_feedback(db, out)["feedback_rows"]}
res["cli_export"] = main(["export-feedback", "--db", db, "--out", out])
try:
    FeedbackStore(db)
    res["app"] = "opened"
except FeedbackDBError as e:
    res["app"] = [e.kind, str(e)]
res["app_cli"] = main(["--feedback-db", db, "--index", "none", "--checkpoint", out + "/nope"])
print("RESULT" + json.dumps(res))
"""


def leftovers(src: Path, dst: Path):
    """The database as a crash (or a copy taken while the app ran) leaves it: every row in the -wal."""
    store = FeedbackStore(src / "fb.db")
    fill(store, 20)
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(str(src / "fb.db") + suffix, str(dst / "fb.db") + suffix)
    store.close()


def leftovers_without_shm(src: Path, dst: Path):
    leftovers(src, dst)
    os.remove(dst / "fb.db-shm")


def closed_cleanly(src: Path, dst: Path):  # the last connection checkpointed: no -wal, no -shm
    store = FeedbackStore(src / "fb.db")
    fill(store, 20)
    store.close()
    shutil.copy(src / "fb.db", dst / "fb.db")


@pytest.mark.parametrize("layout", [leftovers, leftovers_without_shm, closed_cleanly])
def test_export_reads_a_database_in_a_read_only_folder_and_the_app_names_the_path(tmp_path, layout):
    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="keel-ro-test-"))  # reachable by the unprivileged user
    try:
        os.chmod(base, 0o755)
        ro, out = base / "ro", base / "out"
        ro.mkdir()
        out.mkdir()
        layout(tmp_path, ro)
        before = {p.name: p.read_bytes() for p in ro.iterdir()}
        for p in ro.iterdir():
            p.chmod(0o444)
        ro.chmod(0o555)
        out.chmod(0o777)
        env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(out))
        cmd = [sys.executable, "-c", READER, str(ro / "fb.db"), str(out)]
        if os.geteuid() == 0:  # root writes anywhere: read as 'nobody', for whom the folder is read-only
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: cannot make a folder read-only for this test")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
        assert line, proc.stderr[-3000:]
        res = json.loads(line[0][len("RESULT"):])
        assert res["rows"] == 20 and res["cli_export"] == 0
        assert len((out / "kto.jsonl").read_text().splitlines()) == 20
        assert res["app"][0] == "readonly" and str(ro / "fb.db") in res["app"][1]
        assert res["app_cli"] == 2 and "cannot" in proc.stderr and "Traceback" not in proc.stderr
        assert {p.name: p.read_bytes() for p in ro.iterdir()} == before  # nothing written there
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        shutil.rmtree(base, ignore_errors=True)
