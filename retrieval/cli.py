"""``python -m retrieval {build,add,remove,search,info,rebuild,eval,default}``."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from align.errors import KeelError


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        print("no hits (the query has no word, number or symbol the index holds, or the index is empty)")
    for rank, h in enumerate(hits, 1):
        where = f"{h.source} [{h.start}:{h.end}]" + (f" § {h.heading}" if h.heading else "")
        snippet = " ".join(h.text.split())[:200]
        print(f"{rank}. {h.score:.3f}  {where}\n   {snippet}")


def _print_warnings(report) -> None:
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)


def _index_params(pairs: list[str]) -> dict:
    from retrieval.errors import RetrievalError
    from retrieval.options import INDEX_PARAM_KEYS, check_index_params

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in INDEX_PARAM_KEYS:
            raise RetrievalError(f"--index-param {pair!r}: expected KEY=VALUE with KEY one of "
                                 "nlist, nprobe, m, M, ef_construction, ef_search")
        try:
            out[key] = int(value)
        except ValueError:
            raise RetrievalError(f"--index-param {pair!r}: value must be an integer") from None
        try:
            check_index_params({key: out[key]})
        except RetrievalError as e:
            raise RetrievalError(f"--index-param {pair!r}: {e}") from None
    return out


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _float_between(low: float, high: float, what: str = ""):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}{what}, got {text}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    """``python -m retrieval`` (build, add, remove, search, info, rebuild, eval); returns the exit status:
    0, or 2 after an error, which is printed as one line.
    """
    p = argparse.ArgumentParser(prog="python -m retrieval", description="FAISS retrieval over your documents")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="index documents into a new folder")
    b.add_argument("docs", nargs="+", help="files or folders (.txt .md .html .pdf .jsonl)")
    b.add_argument("--out", required=True, help="index folder")
    b.add_argument("--model", default="all-MiniLM-L6-v2", help="sentence-transformers name or folder")
    b.add_argument("--index-type", default="auto", choices=["auto", "flat", "ivf-flat", "ivf-pq", "hnsw"])
    b.add_argument("--chunk-tokens", type=_int_at_least(1), default=200,
                   help="tokens per chunk, special tokens of the embedding model excluded (default 200)")
    b.add_argument("--overlap", type=_int_at_least(0), default=40,
                   help="tokens shared by consecutive chunks, < --chunk-tokens (default 40)")
    b.add_argument("--overwrite", action="store_true", help="replace the index in --out (never a folder that is not an index)")
    b.add_argument("--commit-every", type=_int_at_least(1), default=1024, metavar="N",
                   help="commit every N chunks; an interrupted build resumes when run again (default 1024)")
    b.add_argument("--index-param", action="append", default=[], metavar="KEY=VALUE",
                   help="index parameter: nlist, nprobe, m (IVF-PQ), M, ef_construction, ef_search (HNSW)")
    a = sub.add_parser("add", help="add or update documents (a changed file replaces its chunks)")
    a.add_argument("index")
    a.add_argument("docs", nargs="+")
    a.add_argument("--commit-every", type=_int_at_least(1), default=1024, metavar="N",
                   help="commit every N chunks; an interrupted add resumes when run again (default 1024)")
    r = sub.add_parser("remove", help="remove documents by the paths they were added with (files or folders)")
    r.add_argument("index")
    r.add_argument("docs", nargs="+")
    s = sub.add_parser("search", help="search an index")
    s.add_argument("index", help="index folder, or 'default' for the built-in knowledge base")
    s.add_argument("query")
    s.add_argument("-k", type=_int_at_least(1), default=5, help="number of hits (>= 1)")
    s.add_argument("--mmr", type=_float_between(0, 1, " (1 = relevance only)"), metavar="LAMBDA",
                   help="diversify with MMR, 0..1 (1 = relevance only)")
    s.add_argument("--min-score", type=_float_between(-1, 1, " (cosine similarity)"),
                   help="drop hits below this cosine similarity, -1..1")
    s.add_argument("--mode", choices=["dense", "lexical", "hybrid"],
                   help="dense (FAISS), lexical (BM25, exact identifiers and symbols) or hybrid (both, fused by "
                        "reciprocal rank); default hybrid")
    s.add_argument("--json", action="store_true")
    i = sub.add_parser("info", help="show an index's manifest")
    i.add_argument("index")
    rb = sub.add_parser("rebuild", help="rebuild the FAISS index from stored vectors")
    rb.add_argument("index")
    rb.add_argument("--index-type", choices=["auto", "flat", "ivf-flat", "ivf-pq", "hnsw"])
    rb.add_argument("--index-param", action="append", default=[], metavar="KEY=VALUE")
    e = sub.add_parser("eval", help="recall@1/5/10 and MRR of every search mode on a query file")
    e.add_argument("index")
    e.add_argument("queries", help='JSONL: {"query": ..., "relevant": [source ids], "split": optional}')
    e.add_argument("-k", type=_int_at_least(1), default=10, help="deepest cut-off (default 10)")
    e.add_argument("--mode", action="append", choices=["dense", "lexical", "hybrid"],
                   help="evaluate only this mode (repeatable; default all three)")
    e.add_argument("--split", help="only the query lines with this split (e.g. dev or test)")
    e.add_argument("--out", help="write the JSON report here")
    sub.add_parser("default", help="build (or refresh) the default knowledge base and print its folder")
    args = p.parse_args(argv)
    if args.cmd == "build" and args.overlap >= args.chunk_tokens:
        p.error(f"--overlap {args.overlap} must be smaller than --chunk-tokens {args.chunk_tokens}")
    if args.cmd == "search" and not args.query.strip():  # before the embedding model loads
        p.error("QUERY is empty: give the words (or code) to search for")

    from retrieval.default_kb import open_default_index
    from retrieval.retriever import Retriever

    def open_kb(ref: str) -> Retriever:
        return open_default_index() if ref == "default" else Retriever.open(ref)

    try:
        if args.cmd == "build":
            kb = Retriever.create(args.out, args.model, args.index_type, args.chunk_tokens, args.overlap,
                                  index_params=_index_params(args.index_param), overwrite=args.overwrite,
                                  resume=True)
            kb.commit_every = args.commit_every
            if kb.resumed:
                c = kb.store.counts()
                print(f"resuming the interrupted build in {args.out}: {c['chunks']} chunks of {c['files']} files kept")
            print(f"committing every {kb.commit_every} chunks: if interrupted, run the same command again to resume",
                  file=sys.stderr)
            rep = kb.add(args.docs, progress=True)
            _print_warnings(rep)
            print(f"indexed {rep.added} files, {rep.chunks} chunks into {args.out} ({kb.manifest['index_type']})"
                  + (f"; resumed {rep.resumed}" if rep.resumed else "")
                  + (f"; skipped {rep.skipped} (not text)" if rep.skipped else ""))
        elif args.cmd == "add":
            kb = open_kb(args.index)
            kb.commit_every = args.commit_every
            rep = kb.add(args.docs, progress=True)
            _print_warnings(rep)
            print(f"added {rep.added}, replaced {rep.replaced}, unchanged {rep.unchanged}; {rep.chunks} new chunks"
                  + (f"; skipped {rep.skipped} (not text)" if rep.skipped else ""))
        elif args.cmd == "remove":
            print(f"removed {open_kb(args.index).remove(args.docs)} files")
        elif args.cmd == "search":
            _print_hits(open_kb(args.index).search(args.query, args.k, args.mmr, args.min_score, mode=args.mode),
                        args.json)
        elif args.cmd == "info":
            print(json.dumps(open_kb(args.index).info(), indent=2))
        elif args.cmd == "rebuild":
            from retrieval.retriever import Retriever

            kb = Retriever.open(args.index, check=False)  # rebuilding repairs an inconsistent index
            kb.rebuild(args.index_type, _index_params(args.index_param) or None)
            print(f"rebuilt {args.index}: {kb.manifest['index_type']}, {kb.manifest['counts']['index_vectors']} vectors")
        elif args.cmd == "eval":
            from retrieval.evaluate import evaluate, format_table, read_queries

            queries = read_queries(Path(args.queries), args.split)
            report = {**evaluate(open_kb(args.index), queries, args.k, args.mode), "split": args.split}
            print(format_table(report))
            if args.out:
                Path(args.out).write_text(json.dumps(report, indent=2))
        elif args.cmd == "default":
            print(open_default_index().folder)
    except KeelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
