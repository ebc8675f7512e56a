"""Errors for user mistakes: one clear message, no traceback at the CLI."""


class GovlabError(Exception):
    """A user-facing error (bad input, bad file, bad config)."""
