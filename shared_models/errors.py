"""The one exception hierarchy of fedpriv.

Every error a user can cause (a bad flag, a missing data file, an impossible
privacy budget) is a :class:`FedprivError`. The command-line entry points catch
it and print its message as one line, with a non-zero exit code. Messages say
what was expected, what was seen, and what to do.
"""

from __future__ import annotations


class FedprivError(Exception):
    """Base class for every error fedpriv raises on purpose."""


class ConfigError(FedprivError, ValueError):
    """A setting is missing, malformed or out of range."""


class DataError(FedprivError):
    """A dataset or data file is missing, malformed or too small."""


class PrivacyBudgetError(FedprivError):
    """A privacy budget is impossible, or would be exceeded."""


class FederationError(FedprivError):
    """The federation cannot go on: too few nodes, or a run that did not complete."""
