"""What an operator reads of a Dagster error: its innermost cause (the wrapper says only "error in op")."""


def innermost_error(error) -> str:
    """The innermost cause of a Dagster SerializableErrorInfo, as 'Type: message' (first lines only)."""
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return ""
    return error.message.strip()
