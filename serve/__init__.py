"""Keel's app: a Gradio chat over a Keel checkpoint (any model reference ``align`` resolves)."""
