"""One exception type for bad user input, so callers and tests can tell it from bugs."""

from __future__ import annotations


class PoseGenInputError(ValueError):
    """Raised when a user-supplied file, field or value is unusable.

    The message always names the file (or argument), the field that is wrong, and the fix.
    """
