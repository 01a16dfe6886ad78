import gzip
import json

import pytest

from align.config import DataConfig
from align.data import (gsm8k_to_sft, hh_to_preference, load_data, parse_gsm8k, parse_hh_transcript, read_rows,
                        split_rows)
from align.errors import DataError
from tests.conftest import BUNDLED_DATA, write_jsonl


def test_hh_transcript_to_messages_merges_repeated_roles():
    text = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: one\n\nHuman: two\n\nAssistant: ok"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "one\n\ntwo"}, {"role": "assistant", "content": "ok"}]


def test_hh_pair_becomes_conversational_preference():
    row = {"chosen": "\n\nHuman: q\n\nAssistant: good", "rejected": "\n\nHuman: q\n\nAssistant: bad"}
    assert hh_to_preference(row) == {"prompt": [{"role": "user", "content": "q"}],
                                     "chosen": [{"role": "assistant", "content": "good"}],
                                     "rejected": [{"role": "assistant", "content": "bad"}]}
    with pytest.raises(ValueError, match="same prompt"):
        hh_to_preference({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"})
    with pytest.raises(ValueError, match="before the first turn"):
        parse_hh_transcript("junk\n\nHuman: a")


@pytest.mark.parametrize("root", ["bundled", "shared"])
def test_every_hh_harmless_pair_reads(root, request):
    base = BUNDLED_DATA if root == "bundled" else request.getfixturevalue("shared_data")
    rows, fp = read_rows(DataConfig(path=str(base / "hh-rlhf" / "harmless.jsonl.gz")))
    assert fp["format"] == "hh" and fp["rows"] == 1800 and fp["skipped"] == 0
    for r in rows:
        assert r["prompt"][-1]["role"] == "user"
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
    # Answers are whole: no split in the middle of a word at the prompt boundary.
    raw = json.loads(gzip.open(base / "hh-rlhf" / "harmless.jsonl.gz", "rt").readline())
    assert raw["chosen"].endswith(rows[0]["chosen"][0]["content"])


def test_gsm8k_rows_on_shared_file(shared_data):
    rows, fp = read_rows(DataConfig(path=str(shared_data / "gsm8k" / "train.jsonl")))
    assert fp["format"] == "gsm8k" and fp["rows"] == 7473 and fp["skipped"] == 0
    first = rows[0]
    assert first["final"] == "72"
    assert "<<" not in first["completion"][0]["content"]
    assert first["completion"][0]["content"].endswith("#### 72")
    assert all(float(r["final"]) == float(r["final"]) for r in rows)


def test_gsm8k_parsing_details():
    p = parse_gsm8k({"question": "Q?", "answer": "It is 1,000+<<1000+200=1200>>200.\n#### 1,200"})
    assert p.final == "1200" and p.solution_text == "It is 1,000+200." and "<<" in p.solution
    with pytest.raises(ValueError, match="####"):
        gsm8k_to_sft({"question": "Q", "answer": "no final line"})


def test_malformed_row_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        {"prompt": "a", "chosen": "b", "rejected": "c"},
        "{not json",
        {"prompt": "a", "chosen": "b"},
    ])
    with pytest.raises(DataError) as e:
        read_rows(DataConfig(path=str(path)))
    assert f"{path} line 3" in str(e.value)
    rows, fp = read_rows(DataConfig(path=str(path), skip_malformed=True))
    assert len(rows) == 2 and fp["skipped"] == 2 and fp["format"] == "trl:preference"


def test_trl_formats_from_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    conv = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    pq.write_table(pa.Table.from_pylist(conv), tmp_path / "pc.parquet")
    loaded = load_data(DataConfig(path=str(tmp_path / "pc.parquet"), eval_size=2))
    assert loaded.format == "trl:prompt_completion" and len(loaded.train) == 8 and len(loaded.eval) == 2
    path = write_jsonl(tmp_path / "unpaired.jsonl", [{"prompt": "p", "completion": "c", "label": True}])
    assert read_rows(DataConfig(path=str(path)))[1]["format"] == "trl:unpaired_preference"
    bad = write_jsonl(tmp_path / "odd.jsonl", [{"question_text": "x"}])
    with pytest.raises(DataError, match=r"odd.jsonl line 1: keys \['question_text'\] match no TRL format"):
        read_rows(DataConfig(path=str(bad)))
    badmsg = write_jsonl(tmp_path / "badmsg.jsonl", [{"messages": [{"role": "user"}]}])
    with pytest.raises(DataError, match=r"line 1: messages\[0\]"):
        read_rows(DataConfig(path=str(badmsg)))


def test_stage_rejects_wrong_format(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "p"}] * 4)
    with pytest.raises(DataError, match="prompt_only.*needs one of"):
        load_data(DataConfig(path=str(path)), accept=("preference",))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_rows(DataConfig(path=str(tmp_path / "none.jsonl")))
    with pytest.raises(DataError, match="is a folder"):
        read_rows(DataConfig(path=str(tmp_path)))


def test_splits_are_deterministic_and_disjoint():
    rows = list(range(100))
    a = split_rows(rows, 0.1, None, seed=3)
    assert a == split_rows(rows, 0.1, None, seed=3)
    assert a != split_rows(rows, 0.1, None, seed=4)
    train, ev = a
    assert len(ev) == 10 and sorted(train + ev) == rows
    assert len(split_rows(rows, 0.0, 7, seed=0)[1]) == 7


def test_preference_rows_reshape_for_sft():
    loaded = load_data(DataConfig(path=str(BUNDLED_DATA / "hh-rlhf" / "harmless.jsonl.gz"), max_rows=20, eval_size=0),
                       accept=("prompt_completion",), reshape_map={"preference": "prompt_completion"})
    row = loaded.train[0]
    assert set(row) == {"prompt", "completion"} and row["completion"][0]["role"] == "assistant"
    assert loaded.fingerprint["sha256"] and loaded.fingerprint["rows"] == 20


# --- issue 21: byte-order marks, damaged files, deep nesting, content that is not text -----------
import codecs  # noqa: E402

from align.data import iter_jsonl, read_jsonl  # noqa: E402

_PAIRS = [{"prompt": f"p{i}", "chosen": "good", "rejected": "bad"} for i in range(4)]


def _jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".json"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_byte_order_mark_is_no_content(tmp_path, suffix, newline):
    body = codecs.BOM_UTF8 + _jsonl_bytes(_PAIRS).replace(b"\n", newline)
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(gzip.compress(body) if suffix.endswith(".gz") else body)
    for skip in (False, True):
        rows, fp = read_rows(DataConfig(path=str(path), skip_malformed=skip))
        assert [r["prompt"] for r in rows] == ["p0", "p1", "p2", "p3"] and fp["skipped"] == 0
    assert [r["prompt"] for r in read_jsonl(path)] == ["p0", "p1", "p2", "p3"]


def test_other_jsonl_readers_take_a_byte_order_mark(tmp_path):
    from agents.evaluate import gsm8k_tasks
    from agents.trajectories import convert_file
    from align.evaluate import gsm8k_suite  # noqa: F401  (reads through read_jsonl)

    rows = [{"question": "Two plus two?", "answer": "2+2=<<2+2=4>>4\n#### 4"}] * 3
    path = tmp_path / "gsm8k.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + _jsonl_bytes(rows))
    assert [t["answer"] for t in gsm8k_tasks(3, path)] == ["4", "4", "4"]
    assert convert_file(path, tmp_path / "out.jsonl")["written"] == 3


@pytest.mark.parametrize("damage", ["flipped", "truncated", "garbage"])
def test_damaged_gzip_is_a_data_error_naming_the_file(tmp_path, damage):
    packed = gzip.compress(_jsonl_bytes(_PAIRS * 2000))
    if damage == "flipped":
        packed = packed[:40] + bytes(b ^ 0xFF for b in packed[40:80]) + packed[80:]
    elif damage == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed = b"\x1f\x8b" + bytes(range(256)) * 8
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(packed)
    for skip in (False, True):
        with pytest.raises(DataError, match=r"pairs\.jsonl\.gz: cannot read (after line \d+|at the start)"):
            read_rows(DataConfig(path=str(path), skip_malformed=skip))


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_line_is_a_malformed_row(tmp_path, depth):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(_jsonl_bytes(_PAIRS[:2]) + b"[" * depth + b"]" * depth + b"\n" + _jsonl_bytes(_PAIRS[2:]))
    with pytest.raises(DataError, match=r"deep\.jsonl line 3: .*nested too deeply"):
        read_rows(DataConfig(path=str(path)))
    rows, fp = read_rows(DataConfig(path=str(path), skip_malformed=True))
    assert len(rows) == 4 and fp["skipped"] == 1


def test_line_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_jsonl_bytes(_PAIRS[:1]) + '{"prompt": "café", "chosen": "a", "rejected": "b"}\n'.encode("cp1252")
                     + _jsonl_bytes(_PAIRS[1:]))
    with pytest.raises(DataError, match=r"latin1\.jsonl line 2: not UTF-8"):
        read_rows(DataConfig(path=str(path)))
    rows, fp = read_rows(DataConfig(path=str(path), skip_malformed=True))
    assert len(rows) == 4 and fp["skipped"] == 1
    assert [lineno for lineno, r in iter_jsonl(path) if isinstance(r, DataError)] == [2]


@pytest.mark.parametrize("bad", [7, 3.5, None, True, {"text": "x"}, ["a", "b"], [{"text": "no type"}]])
@pytest.mark.parametrize("key", ["messages", "prompt", "completion"])
def test_message_content_that_is_not_text_is_refused_naming_the_row(tmp_path, bad, key):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]} \
        if key == "messages" else {"prompt": [{"role": "user", "content": "q"}],
                                   "completion": [{"role": "assistant", "content": "a"}]}
    broken = json.loads(json.dumps(good))
    broken[key][-1]["content"] = bad
    path = write_jsonl(tmp_path / "chat.jsonl", [good, broken, good])
    with pytest.raises(DataError, match=rf"chat\.jsonl line 2: {key}\[\d\]\.content must be a string"):
        read_rows(DataConfig(path=str(path)))
    rows, fp = read_rows(DataConfig(path=str(path), skip_malformed=True))
    assert len(rows) == 2 and fp["skipped"] == 1


def test_multimodal_content_parts_and_string_content_still_read(tmp_path):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                          {"role": "assistant", "content": "a"}]}
    rows, _ = read_rows(DataConfig(path=str(write_jsonl(tmp_path / "p.jsonl", [parts, parts]))))
    assert rows[0]["messages"][0]["content"][0]["text"] == "q"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00\x01", b"[1, 2]", b"[" * 100_000])
def test_adapter_config_that_is_not_json_is_a_checkpoint_error(tmp_path, content):
    from align.errors import CheckpointError
    from align.models import resolve_model

    (tmp_path / "adapter_config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"adapter_config\.json is corrupt"):
        resolve_model(str(tmp_path))
