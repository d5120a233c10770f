"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class RecsysError(Exception):
    """A problem the user can fix: the message names the file or field and what is wrong.

    Stages raise it for bad input instead of letting a library traceback escape, so the CLI
    can print one line (the full traceback only with --debug).
    """


class ValidationFailed(RecsysError):
    """Raised by the validate stage; `lines` holds one line per failed expectation."""

    def __init__(self, path: str, lines: list[str]):
        self.lines = lines
        detail = "\n".join(f"  {line}" for line in lines)
        super().__init__(f"{path}: validation failed ({len(lines)} expectation(s))\n{detail}")
