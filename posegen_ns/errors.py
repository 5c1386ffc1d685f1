"""One exception type for bad user input, so callers and tests can tell it from bugs (and one check of a folder
argument that tells a missing folder from a file)."""

from __future__ import annotations

from pathlib import Path


class PoseGenInputError(ValueError):
    """Raised when a user-supplied file, field or value is unusable.

    The message always names the file (or argument), the field that is wrong, and the fix.
    """


def require_folder(path: str | Path, what: str, fix: str) -> Path:
    """``path`` (expanded) if it is an existing folder.

    Raises:
        PoseGenInputError: ``path`` does not exist, or is a file and not a folder; the message starts with
            ``what`` and the path and ends with ``fix`` (e.g. ``"pass a folder with capture.json"``).
    """
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise PoseGenInputError(f"{what} {folder} is a file, not a folder; {fix}.")
    raise PoseGenInputError(f"{what} {folder} does not exist; {fix}.")
