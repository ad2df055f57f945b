"""The range checks every setting goes through, with one wording for each.

A setting parsed at an edge (a flag, a run config, a ledger file) is checked
here; the message names the setting, the rule and the value seen, so a user
reads the same sentence whichever command caught it.
"""

from __future__ import annotations

import math

from fedpriv.shared_models.errors import ConfigError

__all__ = ["check_delta", "check_int_at_least", "check_positive", "check_probability_open"]


def check_positive(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number > 0, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be > 0, got {value}")
    return float(value)


def check_int_at_least(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_probability_open(name: str, value: object) -> float:
    """``value`` if it is a number in the open interval (0, 1), else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {value}")
    return float(value)


def check_delta(value: object, name: str = "delta") -> float:
    """A delta of an (epsilon, delta) guarantee: in (0, 1)."""
    return check_probability_open(name, value)
