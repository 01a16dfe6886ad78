"""`retrieval build` on one large text file against the same text split into many files (issue #21).

Two measurements, each layout in its own child process (peak memory = the child's ru_maxrss):

1. **Chunking** (load + decode + chunk with the embedding model's tokenizer, no embedding) of the
   whole text (default 20 MB): this code against the baseline, Keel at ``--baseline-rev`` (before
   the #21 fixes), exported with ``git archive`` and run in the same run.
2. **Full build** (``python -m retrieval build``: chunk, embed, commit every ``--commit-every``
   chunks, progress bar) of a slice (default 1 MB): embedding all 20 MB takes about an hour on 2
   shared cores. With ``--baseline-build`` the baseline builds the slice too.

The text is CPython's ``pydoc_data.topics`` (the Python language reference, English prose and
code) repeated with numbered section headings until it reaches the size; the split layout cuts the
same text into ``--files`` files at paragraph boundaries.

    OMP_NUM_THREADS=1 python bench/bench_retrieval_build.py --mb 20 --embed-mb 1 --files 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHUNK_NEW = """
import resource, sys, time
from pathlib import Path
from retrieval.embeddings import Embedder
from retrieval.loaders import expand_paths, load
from retrieval.chunking import iter_chunks
tok = Embedder().tokenizer
t = time.perf_counter(); n = 0
for f in expand_paths([sys.argv[1]]):
    for doc in load(f).documents:
        for _ in iter_chunks(doc, tok, 200, 40, max_length=256):
            n += 1
print({"seconds": time.perf_counter() - t, "chunks": n,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
"""

CHUNK_BASELINE = """
import resource, sys, time
from retrieval.embeddings import Embedder
from retrieval.loaders import expand_paths, load_file
from retrieval.chunking import chunk_document
tok = Embedder().tokenizer
t = time.perf_counter(); n = 0
for f in expand_paths([sys.argv[1]]):
    for doc in load_file(f):
        n += len(chunk_document(doc, tok, 200, 40))
print({"seconds": time.perf_counter() - t, "chunks": n,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
"""

BUILD = """
import resource, runpy, sys, time
sys.argv = ["retrieval"] + sys.argv[1:]
t = time.perf_counter(); rc = 0
try:
    runpy.run_module("retrieval", run_name="__main__")
except SystemExit as e:
    rc = e.code
print({"seconds": time.perf_counter() - t, "rc": rc,
       "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
"""


def make_text(n_bytes: int) -> str:
    from pydoc_data.topics import topics

    base = "\n\n".join(topics[k] for k in sorted(topics))
    parts, size, i = [], 0, 0
    while size < n_bytes:
        part = f"# Section {i}\n\n{base}\n\n"
        parts.append(part)
        size += len(part.encode())
        i += 1
    return "".join(parts).encode()[:n_bytes].decode("utf-8", errors="ignore")


def write_layouts(text: str, root: Path, n_files: int) -> tuple[Path, Path]:
    one = root / "one"
    many = root / "many"
    one.mkdir(parents=True)
    many.mkdir(parents=True)
    (one / "all.txt").write_text(text)
    paras = text.split("\n\n")
    per = max(1, len(paras) // n_files)
    for i in range(n_files):
        chunk = paras[i * per:(i + 1) * per] if i < n_files - 1 else paras[i * per:]
        (many / f"part{i:03d}.txt").write_text("\n\n".join(chunk))
    return one, many


def child(code: str, args: list[str], cwd: Path, log: Path | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if log:
        log.write_text(proc.stderr)
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not last:
        raise SystemExit(f"child failed in {cwd}: {' '.join(args)}\n{proc.stderr[-3000:]}")
    out = eval(last[-1], {"__builtins__": {}})  # noqa: S307 - our own child's dict literal of numbers
    out["stdout"] = [line for line in proc.stdout.splitlines() if not line.startswith("{")][-2:]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=20)
    ap.add_argument("--embed-mb", type=float, default=1)
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--commit-every", type=int, default=1024)
    ap.add_argument("--baseline-rev", default="86e4600", help="Keel before the #21 retrieval fixes")
    ap.add_argument("--baseline-build", action="store_true", help="also build the slice with the baseline")
    ap.add_argument("--skip-build", action="store_true", help="chunking only")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "retrieval_build.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="keel-bench-build-"))
    baseline = work / "baseline"
    baseline.mkdir()
    subprocess.run(f"git -C {REPO} archive {args.baseline_rev} | tar -x -C {baseline}", shell=True, check=True)
    big_one, big_many = write_layouts(make_text(int(args.mb * 1e6)), work / "big", args.files)
    small_one, small_many = write_layouts(make_text(int(args.embed_mb * 1e6)), work / "small", args.files)
    results: dict = {"mb": args.mb, "embed_mb": args.embed_mb, "files": args.files, "baseline_rev": args.baseline_rev,
                     "commit_every": args.commit_every, "omp_threads": os.environ.get("OMP_NUM_THREADS", "1"),
                     "cpu": platform.processor() or platform.machine(), "chunking": {}, "build": {}}
    for layout, folder in (("1 file", big_one), (f"{args.files} files", big_many)):
        for who, code, cwd in (("this", CHUNK_NEW, REPO), ("baseline", CHUNK_BASELINE, baseline)):
            r = child(code, [str(folder)], cwd)
            results["chunking"][f"{who}, {layout}"] = r
            print(f"chunk {args.mb:g} MB {layout:>9} {who:>8}: {r['seconds']:7.1f} s  {r['peak_rss_mb']:7.0f} MB peak  "
                  f"{r['chunks']} chunks", flush=True)
    builds = [] if args.skip_build else [("this", REPO)] + ([("baseline", baseline)] if args.baseline_build else [])
    for layout, folder in (("1 file", small_one), (f"{args.files} files", small_many)):
        for who, cwd in builds:
            out = work / f"kb-{who}-{layout.replace(' ', '')}"
            cli = ["build", str(folder), "--out", str(out)]
            if who == "this":
                cli += ["--commit-every", str(args.commit_every)]
            r = child(BUILD, cli, cwd, log=work / f"{out.name}.log")
            results["build"][f"{who}, {layout}"] = r
            print(f"build {args.embed_mb:g} MB {layout:>9} {who:>8}: {r['seconds']:7.1f} s  {r['peak_rss_mb']:7.0f} MB peak  "
                  f"{r['stdout'][-1] if r['stdout'] else ''}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"-> {args.out} (work folder {work})")


if __name__ == "__main__":
    main()
