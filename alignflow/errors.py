"""One exception family. Each error names the thing, the cause and the fix.

`ConfigError` and `DataError` are never retried: running the same bad input again cannot help.
`TransientError` marks a failure worth a retry (a network blip, a killed trainer, a slow server).
"""

from __future__ import annotations


class AlignflowError(Exception):
    """Base of every error alignflow raises on purpose; the CLI prints it without a traceback."""

    exit_code = 1


class ConfigError(AlignflowError):
    """The spec or a command-line option is wrong. Carries every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str = "spec"):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"{source} has {len(self.problems)} {noun}:\n{lines}")


class UsageError(AlignflowError):
    """A command was given something it cannot use (a name, a path, a value); nothing was done or written.
    One line: what was given, why it cannot be used, and what to pass instead."""

    exit_code = 2


class DataError(AlignflowError):
    """A dataset row or file cannot be used: names the file, the line and the reason."""

    exit_code = 2


class SourceError(AlignflowError):
    """A model or dataset source is unknown or unreachable; says which cache to fill or path to pass."""

    exit_code = 2


class StorageError(AlignflowError):
    """The artifact store refused, lacks, or returned corrupt data for an object."""


class ArtifactNotFound(StorageError):
    """The store has no such artifact, version or alias: what was asked for is wrong, not the store."""

    exit_code = 2


class ConflictError(StorageError):
    """A compare-and-swap lost the race: someone else changed the pointer first."""


class StageError(AlignflowError):
    """A stage ran and failed for a reason that another attempt will not fix."""


class TransientError(AlignflowError):
    """A failure that may pass: retried with backoff by the stage's Prefect retries."""


NOT_RETRIED = (ConfigError, UsageError, DataError, SourceError, StageError)

# What a retry may fix. Storage backends raise TransientError for throttling and 5xx answers.
TRANSIENT = (TransientError, ConnectionError, TimeoutError)


def _drop_input_error_traceback(record) -> bool:
    """A logging filter: a record about one of our input errors (bad spec, data or source) keeps its
    message, which names the thing, the cause and the fix, and loses the traceback, which says nothing
    more to the user. Any other exception keeps its traceback."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, (ConfigError, DataError, SourceError)):
        record.exc_info, record.exc_text = None, None
    return True


def hide_tracebacks_of_input_errors() -> None:
    """Install the filter on Prefect's run loggers (idempotent)."""
    import logging

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if _drop_input_error_traceback not in logger.filters:
            logger.addFilter(_drop_input_error_traceback)
