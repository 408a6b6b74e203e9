"""Errors and warnings of the dataset loaders (shared by the readers and the manifest)."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """Missing, partial or malformed dataset data, or a bad dataset option.

    The message is meant for the person running the suite: it names the path, the suite.yaml key
    that points there and how to obtain the data. `path` and `config_key` carry the same facts for
    callers that want to rephrase (e.g. fill in the index `i` of `datasets[i]`).
    """

    def __init__(self, message: str, *, path: Path | str | None = None,
                 config_key: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)
        self.config_key = config_key


class ManifestMismatchError(DatasetError):
    """The data on disk no longer matches the manifest written when it was first loaded."""

    def __init__(self, message: str, *, path: Path, changed: list[str], missing: list[str],
                 added: list[str], unselected: list[str], index_changed: bool) -> None:
        super().__init__(message, path=path)
        self.changed = changed
        self.missing = missing
        self.added = added
        self.unselected = unselected
        self.index_changed = index_changed


class DatasetWarning(UserWarning):
    """Data problems that an option (e.g. `allow_missing`) turned from errors into warnings."""
