"""Keel's retrieval: a FAISS index over the user's documents with a SQLite docstore.

    from retrieval import Retriever
    kb = Retriever.open("runs/index")
    for hit in kb.search("how do I resume training?", k=3):
        print(hit.score, hit.source, hit.heading, hit.text[:80])
"""
from retrieval.errors import RetrievalError
from retrieval.retriever import AddReport, Hit, Retriever

__all__ = ["Retriever", "Hit", "AddReport", "RetrievalError"]
