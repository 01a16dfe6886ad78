"""The shared data layer: every stage reads its rows through ``load_data``.

Rows come out in TRL's conversational formats (lists of ``{"role", "content"}`` messages):
  - preference: ``prompt`` (messages), ``chosen`` and ``rejected`` (one assistant message each);
  - prompt-completion: ``prompt`` (messages) and ``completion`` (one assistant message);
  - language modelling: ``messages``; unpaired preference: ``prompt``, ``completion``, ``label``.
Readers: Anthropic HH-RLHF transcripts, GSM8K rows, and any JSONL / Parquet / hub dataset already
in a TRL standard or conversational format. A malformed row raises ``DataError`` naming the file
and line, or with ``skip_malformed`` is skipped and counted in the fingerprint.

Text files are read as bytes and decoded line by line: a UTF-8 byte-order mark at the start is no
content, a line that is not UTF-8 or nested too deeply for the JSON decoder is a malformed row
(naming its line), and a damaged gzip stream is a ``DataError`` naming the last line read.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from align.config import DataConfig
from align.errors import DataError

# ---------------------------------------------------------------- HH-RLHF
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_ROLE = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> chat messages. Consecutive turns of one role merge."""
    if not isinstance(text, str):
        raise ValueError("transcript is not a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise ValueError(f"text before the first turn marker: {parts[0][:60]!r}")
    messages: list[dict[str, str]] = []
    for role, content in zip(parts[1::2], parts[2::2]):
        role = _ROLE[role]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content.strip()
        else:
            messages.append({"role": role, "content": content.strip()})
    if not messages:
        raise ValueError("no Human:/Assistant: turns")
    return messages


def hh_to_preference(row: dict[str, Any]) -> dict[str, Any]:
    """An HH row ``{"chosen": text, "rejected": text}`` -> TRL conversational preference row."""
    for key in ("chosen", "rejected"):
        if key not in row:
            raise ValueError(f"missing key {key!r}")
    chosen = parse_hh_transcript(row["chosen"])
    rejected = parse_hh_transcript(row["rejected"])
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise ValueError("last turn is not the assistant's")
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected do not share the same prompt turns")
    if chosen[0]["role"] != "user":
        raise ValueError("first turn is not the human's")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


# ---------------------------------------------------------------- GSM8K
_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$", re.S)


@dataclass
class GSM8KProblem:
    """One GSM8K row: the question, the worked solution and the final number."""

    question: str
    solution: str  # worked reasoning, calculator annotations kept (the agent converter uses them)
    final: str  # the number after ####, commas removed

    @property
    def solution_text(self) -> str:
        """The reasoning as a person reads it: ``48/2 = <<48/2=24>>24`` -> ``48/2 = 24``."""
        return _CALC.sub("", self.solution)


def parse_gsm8k(row: dict[str, Any]) -> GSM8KProblem:
    """A GSM8K row (``question``, ``answer`` ending in ``#### n``) as a GSM8KProblem. Raises
    ValueError for a missing key, no ``####`` line or a final answer that is not a number.
    """
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"missing or non-string key {key!r}")
    m = _FINAL.search(row["answer"])
    if not m:
        raise ValueError("answer has no '#### <number>' line")
    final = m.group(1).replace(",", "").strip()
    try:
        float(final)
    except ValueError:
        raise ValueError(f"final answer {final!r} is not a number") from None
    return GSM8KProblem(row["question"].strip(), row["answer"][: m.start()].strip(), final)


def gsm8k_to_sft(row: dict[str, Any]) -> dict[str, Any]:
    """A GSM8K row as a TRL prompt/completion row: the reasoning without calculator annotations,
    then ``#### n``; ``final`` kept for verifiers. Raises ValueError as ``parse_gsm8k``.
    """
    p = parse_gsm8k(row)
    return {
        "prompt": [{"role": "user", "content": p.question}],
        "completion": [{"role": "assistant", "content": f"{p.solution_text}\n#### {p.final}"}],
        "final": p.final,
    }


# ---------------------------------------------------------------- TRL formats
TRL_FORMATS: dict[str, tuple[str, ...]] = {
    # name: keys that must be present (checked most specific first)
    "unpaired_preference": ("prompt", "completion", "label"),
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
    "prompt_only": ("prompt",),
}


def detect_trl_format(row: dict[str, Any]) -> str:
    """The TRL dataset format whose keys ``row`` has (most specific first). Raises ValueError when
    none matches.
    """
    for name, keys in TRL_FORMATS.items():
        if all(k in row for k in keys):
            return name
    raise ValueError(f"keys {sorted(row)} match no TRL format ({', '.join(TRL_FORMATS)})")


def _check_messages(value: Any, key: str) -> None:
    if isinstance(value, str):
        return  # standard (non-conversational) format
    if not isinstance(value, list) or not value:
        raise ValueError(f"{key!r} must be a string or a non-empty list of messages")
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{key}[{i}] is not a {{'role', 'content'}} message")
        if not isinstance(m["role"], str):
            raise ValueError(f"{key}[{i}].role must be a string, not {type(m['role']).__name__}")
        content = m["content"]
        # A string, or (multimodal chat templates) a list of {"type": ..., ...} parts.
        if not (isinstance(content, str) or (isinstance(content, list) and all(
                isinstance(part, dict) and isinstance(part.get("type"), str) for part in content))):
            raise ValueError(f"{key}[{i}].content must be a string (or a list of {{'type': ...}} parts), "
                             f"not {type(content).__name__} {content!r:.40}")


def validate_trl_row(row: dict[str, Any], fmt: str) -> dict[str, Any]:
    """Check ``row`` against TRL format ``fmt`` (keys present, messages well formed, label a bool);
    returns it. Raises ValueError naming the key at fault.
    """
    keys = TRL_FORMATS[fmt]
    missing = [k for k in keys if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing} for format {fmt!r}")
    for k in keys:
        if k == "label":
            if not isinstance(row[k], bool):
                raise ValueError("'label' must be true or false")
        else:
            _check_messages(row[k], k)
    return row


# ---------------------------------------------------------------- reading files
def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or a ``DataError``) for every non-blank line of a JSONL file
    (``.gz``: gzip-compressed). A leading UTF-8 byte-order mark is no content.

    A line that is not UTF-8, not JSON, or nested too deeply to decode comes back as a
    ``DataError`` for that line. Raises ``DataError`` naming the file when it cannot be read at all
    (a damaged gzip stream: after the last line read).
    """
    path = Path(path)
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield lineno, DataError(f"not UTF-8 text (byte {e.start} of the line: {raw[e.start:e.start + 1]!r})")
                    continue
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    yield lineno, DataError(f"not valid JSON ({e.msg}, column {e.colno})")
                except RecursionError:
                    yield lineno, DataError("JSON nested too deeply to read")
    except (OSError, EOFError, zlib.error) as e:
        where = f"after line {lineno}" if lineno else "at the start"
        raise DataError(f"{path}: cannot read {where}: {e}"
                        + (" (the gzip file is damaged or cut short)" if path.suffix == ".gz" else "")) from None


def read_jsonl(path: str | Path) -> list[Any]:
    """Every row of a JSONL file; the first bad line raises ``DataError`` naming file and line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        if isinstance(row, Exception):
            raise DataError(f"{path} line {lineno}: {row}")
        rows.append(row)
    return rows


def _iter_rows(cfg: DataConfig) -> tuple[Iterator[tuple[str, Any]], str | None, str]:
    """Rows with a location label; also the file hash (None for hub datasets) and a source label."""
    path = Path(cfg.path).expanduser()
    if path.is_file():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        name = path.name.lower()
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{path}: cannot read Parquet: {e}") from None
            rows = ((f"{path} row {i + 1}", r) for i, r in enumerate(table.to_pylist()))
        elif name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
            rows = ((f"{path} line {n}", r) for n, r in iter_jsonl(path))
        else:
            raise DataError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz or .parquet)")
        return rows, digest, str(path)
    if path.exists():
        raise DataError(f"{path} is a folder; expected a .jsonl or .parquet file")
    if "/" in cfg.path and not cfg.path.startswith((".", "/", "~")):
        try:
            import datasets

            ds = datasets.load_dataset(cfg.path, split=cfg.hf_split)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"data path {cfg.path!r}: no such file, and not a loadable hub dataset ({e})") from None
        return ((f"{cfg.path}[{cfg.hf_split}] row {i + 1}", r) for i, r in enumerate(ds)), None, cfg.path
    raise DataError(f"data file not found: {path}")


def _row_converter(fmt: str, first: dict[str, Any]) -> tuple[str, Callable[[dict], dict]]:
    if fmt == "auto":
        if isinstance(first, dict) and {"question", "answer"} <= set(first):
            fmt = "gsm8k"
        elif isinstance(first, dict) and isinstance(first.get("chosen"), str) and "\n\nHuman:" in first["chosen"] \
                and "prompt" not in first:
            fmt = "hh"
        else:
            fmt = "trl"
    if fmt == "hh":
        return "hh", hh_to_preference
    if fmt == "gsm8k":
        return "gsm8k", gsm8k_to_sft
    trl_fmt = detect_trl_format(first)
    return f"trl:{trl_fmt}", lambda row: validate_trl_row(row, trl_fmt)


@dataclass
class LoadedData:
    """A stage's data: train and eval ``datasets.Dataset`` (eval may be None) and the fingerprint
    (file hash, format, counts) written to the checkpoint manifest.
    """

    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset or None
    fingerprint: dict[str, Any]

    @property
    def format(self) -> str:
        """The format the rows were read as (``hh``, ``gsm8k`` or ``trl:<kind>``)."""
        return self.fingerprint["format"]


def read_rows(cfg: DataConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All rows converted to TRL format, plus a fingerprint (file hash, format, counts)."""
    rows_iter, digest, source = _iter_rows(cfg)
    rows: list[dict[str, Any]] = []
    skipped = 0
    fmt, convert = None, None
    for where, raw in rows_iter:
        try:
            if isinstance(raw, Exception):
                raise raw
            if not isinstance(raw, dict):
                raise ValueError("row is not a JSON object")
            if convert is None:
                fmt, convert = _row_converter(cfg.format, raw)
            rows.append(convert(raw))
        except (ValueError, KeyError, TypeError, DataError) as e:
            if not cfg.skip_malformed:
                raise DataError(f"{where}: {e} (pass --data.skip_malformed true to skip bad rows)") from None
            skipped += 1
            continue
        if cfg.max_rows and len(rows) >= cfg.max_rows:
            break
    if not rows:
        raise DataError(f"{source}: no usable rows ({skipped} malformed)")
    fingerprint = {"path": source, "sha256": digest, "format": fmt, "rows": len(rows), "skipped": skipped,
                   "max_rows": cfg.max_rows}
    return rows, fingerprint


def split_rows(rows: list, eval_fraction: float, eval_size: int | None, seed: int) -> tuple[list, list]:
    """Deterministic shuffle-split: the same seed and rows always give the same split."""
    n_eval = eval_size if eval_size is not None else int(round(len(rows) * eval_fraction))
    n_eval = min(n_eval, len(rows) - 1)
    order = np.random.default_rng(seed).permutation(len(rows))
    eval_idx, train_idx = sorted(order[:n_eval]), sorted(order[n_eval:])
    return [rows[i] for i in train_idx], [rows[i] for i in eval_idx]


def load_data(cfg: DataConfig, accept: tuple[str, ...] | None = None,
              reshape_map: dict[str, str] | None = None) -> LoadedData:
    """Read, convert, reshape and split one data source.

    ``reshape_map`` maps a format to the one the stage wants (e.g. preference -> prompt_completion
    for SFT on chosen answers); ``accept`` lists the formats the stage can train on, and any other
    raises ``DataError``.
    """
    import datasets

    rows, fp = read_rows(cfg)
    kind = trl_kind(fp["format"])
    if reshape_map and kind in reshape_map:
        target = reshape_map[kind]
        rows = [reshape(r, kind, target, cfg.path) for r in rows]
        kind = target
    if accept and kind not in accept:
        raise DataError(f"{cfg.path}: rows are in format {kind!r}; this stage needs one of {', '.join(accept)}")
    train, evaluation = split_rows(rows, cfg.eval_fraction, cfg.eval_size, cfg.split_seed)
    fp.update({"kind": kind, "split_seed": cfg.split_seed, "train_rows": len(train), "eval_rows": len(evaluation)})
    return LoadedData(
        train=datasets.Dataset.from_list(train),
        eval=datasets.Dataset.from_list(evaluation) if evaluation else None,
        fingerprint=fp,
    )


def trl_kind(fmt: str) -> str:
    """The TRL kind of a Keel format: hh -> preference, gsm8k -> prompt_completion, trl:X -> X."""
    return {"hh": "preference", "gsm8k": "prompt_completion"}.get(fmt, fmt.removeprefix("trl:"))


def reshape(row: dict[str, Any], kind: str, to: str, source: str) -> dict[str, Any]:
    """The few format changes stages need, e.g. SFT on the chosen side of preference pairs."""
    if to == "prompt_completion" and kind == "preference":
        return {"prompt": row["prompt"], "completion": row["chosen"]}
    if to == "prompt_only" and kind in ("preference", "prompt_completion", "unpaired_preference"):
        return {"prompt": row["prompt"], **{k: v for k, v in row.items() if k == "final"}}
    raise DataError(f"{source}: cannot use rows of format {kind!r} as {to!r}")
