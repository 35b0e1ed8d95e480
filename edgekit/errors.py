class EdgekitError(Exception):
    """A user-facing error: printed as one line by the CLI, never as a traceback."""
