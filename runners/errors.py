"""The errors every part of the runner raises: :class:`RunnerError` (one line for the user,
no traceback), the interrupt, and how an error is told in one line.
"""

from __future__ import annotations

from hydra.errors import HydraException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException


class RunnerError(Exception):
    """A mistake in the run's configuration or inputs; the message says how to fix it.

    ``exit_code`` is what the command line exits with: 2 for a mistake in what was asked, 1 for
    a failure of the machine (a full disk).
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run answered; the message says what is kept and how to resume."""


INTERRUPTED = "interrupted: what was answered is kept, run the same command to resume"
INTERRUPTED_EXIT_CODE = 130  # a shell's code for a command ended by SIGINT


def one_line(error: BaseException) -> str:
    """An OmegaConf/Hydra error as one line: its first line, then its cause's first line."""
    message = _first_line(error)
    if isinstance(error, OverrideParseException):
        return (
            f"cannot parse the override {error.override!r} ({message}); quote a value that holds "
            """spaces or braces, e.g. 'dataset.prompt_template="Answer briefly. {prompt}"'"""
        )
    full_key = getattr(error, "full_key", None)
    if full_key and full_key not in message:
        message = f"{full_key}: {message}"
    if options := getattr(error, "options", None):  # a config group option that doesn't exist
        message = f"{message}; choose one of: {', '.join(options)}"
    cause = error.__cause__
    if isinstance(cause, (HydraException, OmegaConfBaseException)) and str(cause).strip():
        message = f"{message.rstrip('.')}: {_first_line(cause)}"
    return message


def _first_line(error: BaseException) -> str:
    """The message's first line, or its first two where the first only announces the second."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
