"""Exceptions for mistakes a user can fix; the CLI prints them as one line and exits with 2."""


class MutualNetError(Exception):
    """A user mistake: bad option, missing file, unknown model, out-of-range configuration."""


class ConfigError(MutualNetError, ValueError):
    """An option or configuration value that cannot be used."""


class UnknownModelError(MutualNetError, KeyError):
    """A model name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(MutualNetError):
    """A dataset that is missing, unreadable or inconsistent."""


class CheckpointError(MutualNetError):
    """A checkpoint or run directory that is missing, corrupt or of another model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks to run code when loaded: refused, never replaced by an older one."""


def printable(name: str) -> str:
    """A name for a one-line message: printable characters as they are, others escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in name)


def listed(names: list[str], most: int = 8) -> str:
    """Names for a message: all of them, or the first ``most`` and a count."""
    text = ", ".join(printable(n) for n in names[:most])
    return text if len(names) <= most else f"{text}, ... ({len(names)} in all)"


def no_folder(path, what: str = "data folder") -> str:
    """Why ``path``, not a directory, is no folder of ``what``, for a message."""
    from pathlib import Path

    return (f"{what} {path} is a file, not a folder" if Path(path).exists() else
            f"{what} {path} does not exist")
