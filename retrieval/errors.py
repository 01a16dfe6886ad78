from align.errors import KeelError


class RetrievalError(KeelError):
    """A document, index folder or query file is missing, damaged or does not match the config."""
