"""Exceptions with one-line messages; the CLI prints them without a traceback."""


class TinyzipError(Exception):
    """Base class of the errors tinyzip raises on purpose (bad files, bad arguments)."""


class FileFormatError(TinyzipError, ValueError):
    """A model, checkpoint or .tz file is missing, truncated, corrupt, tampered or of another version."""
