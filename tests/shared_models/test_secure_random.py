"""The CSPRNG behind every draw that protects privacy: right distribution, never repeated,
never copied."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
from scipy import stats

from fedpriv.shared_models.secure_random import SecureRandom


def test_normal_draws_have_the_asked_mean_and_std():
    draws = SecureRandom().normal(200_000, std=3.0)
    assert draws.dtype == np.float64 and draws.shape == (200_000,)
    assert abs(draws.mean()) < 4 * 3.0 / np.sqrt(200_000)
    assert draws.std() == pytest.approx(3.0, rel=0.01)
    # and the shape of a Gaussian, not just its two moments
    assert stats.kstest(draws / 3.0, "norm").pvalue > 1e-4


def test_uniforms_are_in_the_open_interval_and_uniform():
    u = SecureRandom().uniform(100_000)
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-4


def test_shapes_and_odd_sizes():
    assert SecureRandom().normal((3, 5)).shape == (3, 5)
    assert SecureRandom().normal(7).shape == (7,)


def test_two_generators_never_agree_and_one_never_repeats():
    a, b = SecureRandom(), SecureRandom()
    first = a.normal(1000)
    assert not np.array_equal(first, b.normal(1000))
    assert not np.array_equal(first, a.normal(1000))


def test_it_cannot_be_pickled_or_copied():
    rng = SecureRandom()
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(rng)
    with pytest.raises(TypeError, match="never pickled"):
        copy.deepcopy(rng)


def test_bernoulli_and_integers():
    rng = SecureRandom()
    picks = rng.bernoulli(100_000, 0.2)
    assert picks.mean() == pytest.approx(0.2, abs=0.01)
    values = rng.integers(10, 50_000)
    assert values.min() == 0 and values.max() == 9
    assert np.bincount(values).min() > 4500
