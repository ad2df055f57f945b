"""The bound of a one-run privacy audit: correct membership guesses -> a lower bound on epsilon.

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run"
(NeurIPS 2023, arXiv:2305.08846): with ``m`` canaries each included with
probability 1/2, the number of correct guesses of an (epsilon, delta)-DP run
is dominated by a binomial with success probability e^eps / (1 + e^eps), up
to a delta term. Pure functions; :mod:`fedpriv.simulations.audit` runs the training
and the attack.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

#: k, the number of "in" guesses (and of "out" guesses), as a fraction of the canaries.
GUESS_FRACTIONS: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.2)


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """How likely ``correct`` or more right guesses are if the run is (epsilon, delta)-DP.

    Steinke, Nasr and Jagielski 2023 (arXiv:2305.08846), their bound for
    (epsilon, delta)-DP and its code ``p_value_DP_audit``: with m = ``canaries``
    each included independently with probability 1/2, the number W of correct
    guesses among r = ``guesses`` satisfies, for v = ``correct``,
    ``P[W >= v] <= P[B >= v] + 2 m delta max_{1<=i<=v} P[v-i <= B < v] / i``
    where ``B ~ Binomial(r, e^eps / (1 + e^eps))``. Returns that bound, capped at 1.
    """
    _check_counts(canaries, guesses, correct)
    if not epsilon >= 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon} and {delta}")
    pmf = _binomial_pmf(guesses, epsilon)
    tail = float(pmf[correct:].sum())
    if delta == 0 or correct == 0:
        return min(tail, 1.0)
    below = np.cumsum(pmf[:correct][::-1])  # entry i-1: P[v-i <= B < v]
    alpha = float(np.max(below / np.arange(1, correct + 1)))
    return min(tail + alpha * delta * 2 * canaries, 1.0)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, beta: float
) -> float:
    """The epsilon lower bound that ``correct`` right out of ``guesses`` proves.

    Steinke, Nasr and Jagielski 2023, "Privacy Auditing with One (1) Training
    Run" (arXiv:2305.08846), their ``get_eps_audit``: the largest epsilon whose
    :func:`p_value` is below ``beta``, by bisection to 1e-9 (0.0 when epsilon 0
    is not rejected). Except with probability ``beta`` over the canaries' coin
    flips, the run is not (eps, ``delta``)-DP for any smaller eps. With
    ``delta = 0`` and every guess right it equals ``log(p / (1 - p))`` for
    ``p = beta ** (1 / guesses)``. Epsilon and delta are those of one canary,
    i.e. of one record added or removed.
    """
    _check_counts(canaries, guesses, correct)
    if not 0 < beta < 1:
        raise ValueError(f"beta must be in (0, 1), got {beta}")

    def rejected(eps: float) -> bool:
        p = p_value(canaries=canaries, guesses=guesses, correct=correct, epsilon=eps, delta=delta)
        return p < beta

    if guesses == 0 or not rejected(0.0):
        return 0.0
    low, high = 0.0, 1.0
    while rejected(high):
        low, high = high, 2 * high
    while high - low > 1e-9:
        mid = (low + high) / 2
        low, high = (mid, high) if rejected(mid) else (low, mid)
    return low


def _check_counts(canaries: int, guesses: int, correct: int) -> None:
    if not 0 <= correct <= guesses <= canaries:
        raise ValueError(
            f"need 0 <= correct <= guesses <= canaries, got {correct}, {guesses}, {canaries}"
        )


def _binomial_pmf(trials: int, epsilon: float) -> np.ndarray:
    """P[Binomial(trials, e^eps / (1 + e^eps)) = j] for j = 0..trials, via logs."""
    log_q = -math.log1p(math.exp(-epsilon))
    log_not_q = -epsilon + log_q
    j = np.arange(trials + 1)
    return np.exp(_log_choose(trials) + j * log_q + (trials - j) * log_not_q)


@functools.lru_cache(maxsize=64)
def _log_choose(n: int) -> np.ndarray:
    lg = [math.lgamma(i + 1) for i in range(n + 1)]
    return np.array([lg[n] - lg[i] - lg[n - i] for i in range(n + 1)])


# -- the attack: guesses from scores --


@dataclass(frozen=True)
class Guess:
    """Guess in for the ``k_in`` highest scores, out for the ``k_out`` lowest; abstain else."""

    k_in: int
    k_out: int
    guesses: int
    correct: int
    epsilon: float  # the bound this choice proves, at the Bonferroni-corrected level


def count_correct(scores: np.ndarray, included: np.ndarray, k_in: int, k_out: int) -> int:
    """Right guesses of "in" for the ``k_in`` highest scores and "out" for the ``k_out`` lowest.

    Ties are broken by canary index (a stable sort), never by membership.
    """
    if k_in < 0 or k_out < 0 or k_in + k_out > len(scores):
        raise ValueError(f"need 0 <= k_in + k_out <= {len(scores)}, got {k_in} and {k_out}")
    order = np.argsort(-np.asarray(scores), kind="stable")
    right_in = int(np.sum(included[order[:k_in]]))
    right_out = int(np.sum(~included[order[len(order) - k_out :]])) if k_out else 0
    return right_in + right_out


def guess_choices(canaries: int) -> list[tuple[int, int]]:
    """The (k_in, k_out) the audit tries: k_in = k_out = k, and k_in = k with k_out = 0."""
    ks = sorted({max(1, round(f * canaries)) for f in GUESS_FRACTIONS})
    return [(k, k) for k in ks if 2 * k <= canaries] + [(k, 0) for k in ks]


def best_guess(
    scores: np.ndarray, included: np.ndarray, *, delta: float, beta: float
) -> tuple[Guess, list[Guess]]:
    """The choice of guesses with the highest bound, and every choice tried.

    Like the paper, the audit tries several numbers of guesses and reports the
    best bound. Taking the best of K after seeing which guesses were right
    would make "95%" untrue, so every choice is bounded at ``beta / K``
    (Bonferroni): the best of them still holds at confidence ``1 - beta``.
    """
    choices = guess_choices(len(scores))
    tried = []
    for k_in, k_out in choices:
        correct = count_correct(scores, included, k_in, k_out)
        eps = epsilon_lower_bound(
            canaries=len(scores),
            guesses=k_in + k_out,
            correct=correct,
            delta=delta,
            beta=beta / len(choices),
        )
        tried.append(Guess(k_in, k_out, k_in + k_out, correct, eps))
    return max(tried, key=lambda g: (g.epsilon, g.correct / g.guesses)), tried
