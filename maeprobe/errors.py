"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class MaeprobeError(ValueError):
    """A problem with the inputs (file, flags, images) rather than a bug. A ValueError, so callers may
    catch either."""


class CheckpointError(MaeprobeError):
    """A checkpoint that cannot be used: the message names the file and what was expected."""

    def __init__(self, path, message: str):
        self.path = str(path)
        super().__init__(f"{path}: {message}")
