"""`fedpriv-sim audit`: the one-run epsilon lower bound, its attack and its command.

The bound is checked against closed forms (every guess right; Clopper-Pearson
without delta) and against the paper's p-value computed with scipy's binomial.
The two end-to-end runs are the point: with the noise switched off (the
``no-noise`` fault) the bound must exceed the claimed epsilon, and with the
product's DP-SGD as it is it must stay below the epsilon the ledger reports.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import optimize, stats  # scipy comes with scikit-learn

from fedpriv.simulations.audit import AuditConfig, fedavg, make_canaries
from fedpriv.simulations.audit_bound import (
    best_guess,
    count_correct,
    epsilon_lower_bound,
    guess_choices,
    p_value,
)
from fedpriv.simulations.audit_cli import AUDIT_FILE, PLOT_FILE
from fedpriv.simulations.cli import main


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _scipy_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's ``p_value_DP_audit``, written out with scipy's binomial."""
    q = 1 / (1 + math.exp(-eps))
    tail = stats.binom.sf(v - 1, r, q)
    alpha, below = 0.0, 0.0
    for i in range(1, v + 1):
        below += stats.binom.pmf(v - i, r, q)
        alpha = max(alpha, below / i)
    return min(tail + alpha * delta * 2 * m, 1.0)


# -- the bound --


@pytest.mark.parametrize("guesses", [1, 10, 100, 1000])
@pytest.mark.parametrize("beta", [0.05, 0.01])
def test_all_correct_without_delta_is_the_closed_form(guesses, beta):
    bound = epsilon_lower_bound(
        canaries=1000, guesses=guesses, correct=guesses, delta=0.0, beta=beta
    )
    # One guess proves nothing at 95%: the closed form is negative there, the bound 0.
    assert bound == pytest.approx(max(0.0, _logit(beta ** (1 / guesses))), abs=1e-6)


@pytest.mark.parametrize(("guesses", "correct"), [(100, 80), (400, 399), (50, 31), (1000, 700)])
def test_without_delta_it_is_the_clopper_pearson_lower_limit(guesses, correct):
    # P[Binomial(r, q) >= v] = beta solves to the Beta(v, r - v + 1) quantile at beta.
    q = stats.beta.ppf(0.05, correct, guesses - correct + 1)
    bound = epsilon_lower_bound(
        canaries=1000, guesses=guesses, correct=correct, delta=0.0, beta=0.05
    )
    assert bound == pytest.approx(max(0.0, _logit(q)), abs=1e-6)


@pytest.mark.parametrize(
    ("m", "r", "v"), [(1000, 100, 90), (1000, 400, 390), (200, 20, 20), (50, 10, 3)]
)
@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0, 4.0])
@pytest.mark.parametrize("delta", [0.0, 1e-5, 1e-3])
def test_p_value_matches_the_papers_code_on_scipy(m, r, v, eps, delta):
    ours = p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert ours == pytest.approx(_scipy_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("m", "r", "v"), [(1000, 400, 399), (1000, 200, 180), (500, 100, 95)])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_bound_with_delta_is_where_the_scipy_p_value_reaches_beta(m, r, v, delta):
    root = optimize.brentq(lambda e: _scipy_p_value(m, r, v, e, delta) - 0.05, 0.0, 20.0)
    bound = epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=delta, beta=0.05)
    assert bound == pytest.approx(root, abs=1e-6)
    assert bound < epsilon_lower_bound(canaries=m, guesses=r, correct=v, delta=0.0, beta=0.05)


def test_a_perfect_attack_on_1000_canaries_proves_about_5_8():
    # REFERENCE section 3: with 1,000 canaries the bound cannot exceed about 5.8.
    perfect = epsilon_lower_bound(canaries=1000, guesses=1000, correct=1000, delta=0, beta=0.05)
    assert perfect == pytest.approx(5.81, abs=0.01)
    with_delta = epsilon_lower_bound(
        canaries=1000, guesses=1000, correct=1000, delta=1e-5, beta=0.05
    )
    assert with_delta <= perfect


def test_bound_is_monotone():
    def bound(correct=90, delta=1e-5, beta=0.05):
        return epsilon_lower_bound(
            canaries=1000, guesses=100, correct=correct, delta=delta, beta=beta
        )

    by_correct = [bound(correct=v) for v in range(0, 101, 5)]
    assert by_correct == sorted(by_correct) and by_correct[-1] > by_correct[-3] > 0
    by_delta = [bound(delta=d) for d in (0.0, 1e-6, 1e-5, 1e-4, 1e-3)]
    assert by_delta == sorted(by_delta, reverse=True) and by_delta[0] > by_delta[-1]
    by_beta = [bound(beta=b) for b in (0.001, 0.01, 0.05, 0.2)]
    assert by_beta == sorted(by_beta) and by_beta[0] < by_beta[-1]
    pvals = [
        p_value(canaries=1000, guesses=100, correct=90, epsilon=e, delta=1e-5)
        for e in np.linspace(0, 6, 25)
    ]
    assert pvals == sorted(pvals)


@pytest.mark.parametrize(("guesses", "correct"), [(0, 0), (10, 5), (100, 50), (100, 20)])
def test_chance_level_guessing_proves_nothing(guesses, correct):
    assert (
        epsilon_lower_bound(canaries=1000, guesses=guesses, correct=correct, delta=1e-5, beta=0.05)
        == 0.0
    )


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="correct <= guesses <= canaries"):
        epsilon_lower_bound(canaries=10, guesses=20, correct=5, delta=0, beta=0.05)
    with pytest.raises(ValueError, match="beta"):
        epsilon_lower_bound(canaries=10, guesses=5, correct=5, delta=0, beta=1.0)


# -- the attack --


def test_guesses_count_the_top_as_in_and_the_bottom_as_out():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    included = np.array([True, False, True, False, False, True])
    assert count_correct(scores, included, 2, 2) == 1 + 1
    assert count_correct(scores, included, 3, 0) == 2
    assert count_correct(scores, included, 0, 3) == 2
    # Ties fall back to the canary index, never to membership.
    assert count_correct(np.zeros(6), included, 1, 1) == 1 + 0


def test_best_guess_pays_for_its_choice_with_bonferroni():
    m = 1000
    included = np.random.default_rng(0).random(m) < 0.5
    scores = included + np.random.default_rng(1).normal(0, 0.01, m)  # a perfect attack
    best, tried = best_guess(scores, included, delta=1e-5, beta=0.05)
    assert len(tried) == len(guess_choices(m)) == 10
    assert best.correct == best.guesses == 400  # the most guesses, all right
    corrected = epsilon_lower_bound(
        canaries=m, guesses=400, correct=400, delta=1e-5, beta=0.05 / len(tried)
    )
    assert best.epsilon == pytest.approx(corrected)
    assert best.epsilon < epsilon_lower_bound(
        canaries=m, guesses=400, correct=400, delta=1e-5, beta=0.05
    )


def test_canaries_are_random_images_with_every_label():
    x, y = make_canaries(1000, seed=3)
    assert x.shape == (1000, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0 <= x.min() and x.max() <= 1
    assert (y.reshape(100, 10) == np.arange(10)).all()
    assert (x.reshape(100, 10, 64) == x.reshape(100, 10, 64)[:, :1]).all()  # 10 labels an image
    assert len(np.unique(x.reshape(100, 10, 64)[:, 0], axis=0)) == 100
    assert (x[0, 0, ::2, ::2] == x[0, 0, 1::2, 1::2]).all()  # drawn at 4x4
    again, _ = make_canaries(1000, seed=3)
    other, _ = make_canaries(1000, seed=4)
    assert (again == x).all() and not (other == x).all()
    x7, y7 = make_canaries(7, seed=3)
    assert x7.shape == (7, 1, 8, 8) and list(y7) == list(range(7))


def test_fedavg_is_the_example_weighted_mean():
    states = [{"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([4.0, 8.0])}]
    averaged = fedavg(states, [1, 3])
    assert torch.allclose(averaged["w"], torch.tensor([3.25, 6.5]))
    assert averaged["w"].dtype == torch.float32


# -- the command --


CASES = [
    (["--canaries", "1"], 1, "canaries must be >= 2, got 1"),
    (["--canaries", "abc"], 2, "'abc' is not a valid integer"),
    (["--target-epsilon", "0"], 1, "target epsilon must be a positive number, got 0.0"),
    (["--target-epsilon", "-1"], 1, "target epsilon must be a positive number, got -1.0"),
    (["--fault", "no-clip"], 1, "unknown fault 'no-clip'; choose one of: none, no-noise"),
    (["--no-dp", "--fault", "no-noise"], 1, "drop --no-dp"),
    (["--beta", "1"], 1, "beta (1 - confidence) must be in (0, 1), got 1.0"),
    (["--delta", "0"], 1, "delta must be in (0, 1), got 0.0"),
    (["--accountant", "gdp"], 1, "unknown accountant 'gdp'"),
    (["--rounds", "0"], 1, "rounds must be an integer >= 1, got 0"),
    (["--bogus"], 2, "No such option '--bogus'"),
]


def _assert_one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedpriv-sim audit: error: "), err
    assert needle in lines[0], err


@pytest.mark.parametrize(("args", "code", "needle"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gives_one_line_and_nonzero_exit(args, code, needle, tmp_path, capsys):
    out = tmp_path / "audit"
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--out", str(out), *args])
    _assert_one_error_line(capsys.readouterr().err, needle)
    assert exit_info.value.code == code
    assert not out.exists()


def test_a_non_empty_out_folder_is_refused_before_training(tmp_path, capsys):
    out = tmp_path / "earlier"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["audit", "--out", str(out)])
    _assert_one_error_line(capsys.readouterr().err, "already exists and is not empty")
    assert exit_info.value.code == 1
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


def test_help_names_the_exit_codes(capsys):
    try:
        main(["audit", "--help"])
    except SystemExit as exit_:
        assert not exit_.code
    assert "3: it exceeds" in " ".join(capsys.readouterr().out.split())


def test_without_dp_the_claim_is_infinite(tmp_path, capsys):
    out = tmp_path / "no-dp"
    args = ["--no-dp", "--canaries", "100", "--rounds", "1", "--local-epochs", "1"]
    main(["audit", *args, "--out", str(out)])
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "claimed ε=∞ (no DP)" in summary and "PASS" in summary
    report = json.loads((out / AUDIT_FILE).read_text())
    assert report["claimed"]["epsilon"] is None  # JSON has no infinity
    assert report["claimed"]["accountant"] == "none"


def _run(args: list[str], out: Path, capsys) -> tuple[int, str, dict]:
    try:
        main(["audit", "--out", str(out), *args])
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    return code, summary, json.loads((out / AUDIT_FILE).read_text())


@pytest.mark.slow
def test_a_run_without_noise_is_caught(tmp_path, capsys):
    code, summary, report = _run(["--fault", "no-noise"], tmp_path / "broken", capsys)
    claimed, bound = report["claimed"]["epsilon"], report["bound"]["epsilon"]
    assert claimed == pytest.approx(AuditConfig().target_epsilon, abs=0.02)
    assert report["claimed"]["noise_multiplier_booked"] > 1
    assert report["claimed"]["noise_multiplier_trained"] == 0
    assert bound > claimed + 0.5, summary
    assert code == 3
    assert "FAIL: bound exceeds claimed ε" in summary
    assert f"ε ≥ {bound:.3f}" in summary and f"claimed ε={claimed:.3f}" in summary
    assert report["passed"] is False
    canaries = report["canaries"]
    assert len(canaries) == AuditConfig().canaries
    assert 400 < sum(c["included"] for c in canaries) < 600
    assert (tmp_path / "broken" / PLOT_FILE).stat().st_size > 1000


@pytest.mark.slow
def test_the_real_dp_training_stays_below_its_claim(tmp_path, capsys):
    code, summary, report = _run([], tmp_path / "correct", capsys)
    claimed, bound = report["claimed"]["epsilon"], report["bound"]["epsilon"]
    assert claimed == pytest.approx(AuditConfig().target_epsilon, abs=0.02)
    assert report["claimed"]["noise_multiplier_trained"] > 1
    assert bound < claimed, summary
    assert code == 0
    assert "PASS: bound ≤ claimed" in summary
    assert report["passed"] is True
