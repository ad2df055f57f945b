"""Epsilons computed independently, with Google's ``dp-accounting``.

Every figure fedpriv reports is checked against these, never against a
re-computation of the formula under test.
"""

from __future__ import annotations

import dp_accounting
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant


def _accountant(method: str) -> RdpAccountant | PLDAccountant:
    if method not in ("rdp", "pld"):
        raise ValueError(f"method must be rdp or pld, got {method!r}")
    return RdpAccountant() if method == "rdp" else PLDAccountant()


def dpsgd_epsilon(history, delta: float, method: str = "rdp") -> float:
    """Epsilon of a DP-SGD history ``[(noise_multiplier, sample_rate, steps), ...]``."""
    events = [
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        for sigma, q, steps in history
    ]
    accountant = _accountant(method)
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return accountant.get_epsilon(delta)


def gaussian_epsilon(z: float, releases: int, delta: float, method: str = "rdp") -> float:
    """Epsilon of ``releases`` Gaussian mechanisms of noise multiplier ``z`` (no sampling)."""
    accountant = _accountant(method)
    accountant.compose(dp_accounting.GaussianDpEvent(z), releases)
    return accountant.get_epsilon(delta)
