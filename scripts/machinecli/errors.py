"""The one error type of ``scripts/machine``."""


class MachineError(Exception):
    """A failure worded for the user; the CLI prints it as one ``Error: …`` line (or its own lines)."""
