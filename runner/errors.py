"""The one error type a user can cause. The CLI prints its message on one line and exits with code 2."""


class UsageError(Exception):
    """A mistake in the user's input: a bad config key or value, a missing data file, a wrong path."""
