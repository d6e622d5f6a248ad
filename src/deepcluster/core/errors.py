"""User-facing errors.

Every problem caused by the user's input (files, config, data shape) raises a subclass of
:class:`DeepClusterError` whose message names the problem *and* the fix. The CLI prints it on
one line and exits non-zero, without a traceback; anything else is a bug and keeps its traceback.
"""


class DeepClusterError(Exception):
    """Base class of all errors caused by user input."""


class DataError(DeepClusterError):
    """A dataset is missing, unreadable, corrupt or inconsistent."""


class ConfigError(DeepClusterError):
    """A configuration key or value is invalid."""


class ClusteringError(DeepClusterError):
    """Clustering cannot run on the given features (k too large, NaN, degenerate PCA...)."""


class TrainingError(DeepClusterError):
    """Training diverged (NaN loss) or a run folder is unusable."""


class DiskFullError(DeepClusterError):
    """A write failed because the disk (or the user's quota) is full; what was written before is intact."""

    def __init__(self, path: object) -> None:
        super().__init__(f"the disk is full at {path}: free space and resume")
        self.path = path


class DeepClusterWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints one line)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its class name
    when it has none: what a one-line error quotes of a library's own error."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else e.__class__.__name__
