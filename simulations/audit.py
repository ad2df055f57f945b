"""An empirical lower bound on epsilon from one training run (``fedpriv-sim audit``).

One-run auditing after Steinke, Nasr and Jagielski, "Privacy Auditing with One
(1) Training Run" (NeurIPS 2023, arXiv:2305.08846). Each of ``m`` canaries goes
into client 0's training data independently with probability 1/2; a small
federation trains with the product's own client round
(:func:`fedpriv.client.round.client_round`: the budget check, DP-SGD, the
ledger a node keeps); a membership attack on the final global model guesses which
canaries were in. Too many correct guesses are unlikely under the claimed
(epsilon, delta)-DP, so they prove a lower bound on the true epsilon. A bound
above the claim shows the claim is false: noise off, clipping off, or an
accountant that counts too few steps.

Canaries: ``ceil(m / 10)`` random images, each paired with every one of the 10
labels. A canary's score is its label's logit minus the mean logit of its image:
for one image, the labels trained on get more of the probability than the
others, whatever the model makes of the image. Random images lie far from the
digits, so they do not fight the real data, and an image's ten canaries share
one baseline. (Real digits with a wrong label, or one label per random image,
gave a much weaker signal on the 8x8 CNN.) The images are drawn at 4x4 and
upsampled, because the CNN pools to 4x4 and would average pixel noise away.

The claim audited is the one client 0 reports: example-level DP of its records,
cumulative over all rounds. Its sampling rate follows its data size, which
counts the included canaries (as Opacus does); that leaks their number, not
which ones were in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedpriv.client.data import ClientData
from fedpriv.client.ledger_store import MemoryStore
from fedpriv.client.round import client_round
from fedpriv.client.training import DPStep, LocalResult, train_locally
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.evaluation import evaluate_model
from fedpriv.shared_models.registry import ModelConfig, build_model
from fedpriv.simulations.audit_bound import Guess, best_guess
from fedpriv.simulations.audit_config import AuditConfig
from fedpriv.simulations.datasets import load_dataset

logger = logging.getLogger(__name__)

NUM_CLASSES = 10  # digits
CANARY_SIDE = 4  # canary images are drawn at 4x4 and upsampled to the digits' 8x8
MODEL = ModelConfig(name="cnn", num_classes=NUM_CLASSES, in_channels=1, image_size=8)


def canary_scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each canary's label logit minus the mean logit of its image; higher: more likely in.

    Equal to the label's log-probability minus the mean log-probability of all
    labels of that image, so the ten canaries of an image share one baseline.
    """
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(x)).double()
    picked = logits.gather(1, torch.tensor(y)[:, None]).squeeze(1)
    return (picked - logits.mean(dim=1)).numpy()


def make_canaries(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``ceil(count / 10)`` random images, each with labels 0..9, cut to ``count`` canaries.

    Returns float32 images (count, 1, 8, 8) in [0, 1] and int64 labels (count,).
    """
    images = -(-count // NUM_CLASSES)
    rng = np.random.default_rng([seed, 1])
    small = rng.random((images, 1, CANARY_SIDE, CANARY_SIDE)).astype(np.float32)
    scale = 8 // CANARY_SIDE
    x = np.repeat(small.repeat(scale, axis=2).repeat(scale, axis=3), NUM_CLASSES, axis=0)
    y = np.tile(np.arange(NUM_CLASSES, dtype=np.int64), images)
    return x[:count], y[:count]


# -- the run --


@dataclass(frozen=True)
class AuditResult:
    """What one audit found. ``claimed_epsilon`` is ``inf`` without DP."""

    config: AuditConfig
    claimed_epsilon: float
    noise_booked: float  # the noise multiplier client 0's ledger records
    noise_trained: float  # the one its training added
    bound: Guess
    tried: list[Guess]
    included: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    test_accuracy: float
    seconds: float

    @property
    def passed(self) -> bool:
        """True when the bound does not exceed the claimed epsilon."""
        return self.bound.epsilon <= self.claimed_epsilon

    def summary(self) -> str:
        """One line: the claim, the bound and the verdict."""
        cfg = self.config
        claim = (
            f"claimed ε={self.claimed_epsilon:.3f} (example-level, cumulative, "
            f"δ={cfg.delta:g}, {cfg.accountant.upper()})"
            if cfg.dp
            else "claimed ε=∞ (no DP)"
        )
        verdict = (
            "PASS: bound ≤ claimed"
            if self.passed
            else "FAIL: bound exceeds claimed ε: the privacy claim is false"
        )
        return (
            f"audit: {claim} | empirical lower bound ε ≥ {self.bound.epsilon:.3f} "
            f"({100 * (1 - cfg.beta):g}% confidence, {cfg.canaries} canaries, "
            f"{self.bound.guesses} guesses, {self.bound.correct} correct) | {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Everything ``audit.json`` holds (infinite epsilons become null there)."""
        cfg = self.config
        return {
            "settings": asdict(cfg),
            "claimed": {
                "epsilon": self.claimed_epsilon,
                "delta": cfg.delta,
                "accountant": cfg.accountant if cfg.dp else "none",
                "guarantee": "example-level, cumulative over all rounds, client 0's ledger",
                "noise_multiplier_booked": self.noise_booked,
                "noise_multiplier_trained": self.noise_trained,
            },
            "bound": {
                "epsilon": self.bound.epsilon,
                "confidence": 1 - cfg.beta,
                "delta": cfg.delta,
                "method": "Steinke, Nasr, Jagielski 2023 (arXiv:2305.08846), (eps, delta)-DP "
                "bound, best of the choices of guesses, Bonferroni-corrected",
                "k_in": self.bound.k_in,
                "k_out": self.bound.k_out,
                "guesses": self.bound.guesses,
                "correct": self.bound.correct,
                "choices": [asdict(g) for g in self.tried],
            },
            "passed": self.passed,
            "summary": self.summary(),
            "test_accuracy": self.test_accuracy,
            "seconds": self.seconds,
            "canaries": [
                {"index": i, "label": int(label), "included": bool(inc), "score": float(score)}
                for i, (label, inc, score) in enumerate(
                    zip(self.labels, self.included, self.scores, strict=True)
                )
            ],
        }


def run_audit(config: AuditConfig) -> AuditResult:
    """Insert the canaries, train the federation, attack the final model, bound epsilon.

    Trains on one CPU thread (restored afterwards): the 8x8 CNN is too small to
    gain from more, and on a busy two-core machine two threads ran 10x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            # Known and harmless here, as in the tests: Opacus's secure_mode is off
            # (fedpriv/client/training.py says why), and its hooks fire on inputs that
            # need no gradient.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            return _run_audit(config)
    finally:
        torch.set_num_threads(threads)


def _run_audit(config: AuditConfig) -> AuditResult:
    started = time.monotonic()
    data = load_dataset("digits", seed=config.seed)
    needed = config.clients * config.examples_per_client
    if needed > len(data.pool):
        raise ConfigError(
            f"{config.clients} clients x {config.examples_per_client} examples need {needed} "
            f"digits but there are {len(data.pool)}; use fewer clients or examples per client"
        )
    rng = np.random.default_rng([config.seed, 0])
    canary_x, canary_y = make_canaries(config.canaries, config.seed)
    included = rng.random(config.canaries) < 0.5
    parts = np.split(rng.permutation(len(data.pool))[:needed], config.clients)
    xs = [data.pool.x[p] for p in parts]
    ys = [data.pool.y[p] for p in parts]
    xs[0] = np.concatenate([xs[0], canary_x[included]])
    ys[0] = np.concatenate([ys[0], canary_y[included]])
    clients = [
        ClientData(cid, x, y, x[:0], y[:0], MODEL)
        for cid, (x, y) in enumerate(zip(xs, ys, strict=True))
    ]
    stores = [MemoryStore() for _ in clients]
    cfg = config.run_config()
    train = _train_without_noise if config.fault == "no-noise" else train_locally
    logger.info(
        "audit: %d canaries, %d of them in client 0's data; %d clients x %d digits, "
        "%d rounds x %d local epochs; %s",
        config.canaries,
        int(included.sum()),
        config.clients,
        config.examples_per_client,
        config.rounds,
        config.local_epochs,
        _privacy_words(config),
    )
    torch.manual_seed(config.seed)
    global_model = build_model(MODEL)
    for rnd in range(1, config.rounds + 1):
        states = []
        for client, store in zip(clients, stores, strict=True):
            model = build_model(MODEL)
            model.load_state_dict(global_model.state_dict())
            result = client_round(
                model,
                client,
                cfg,
                store=store,
                run_id=0,
                server_round=rnd,
                device=torch.device("cpu"),
                seed=config.seed * 1_000_003 + client.partition_id * 1009 + rnd,
                train=train,
            )
            states.append(result.update)
        global_model.load_state_dict(fedavg(states, [len(c.y_train) for c in clients]))
        _, accuracy = evaluate_model(global_model, data.test.x, data.test.y)
        logger.info(
            "round %d/%d: test accuracy %.3f; client 0 has spent ε=%.3f",
            rnd,
            config.rounds,
            accuracy,
            _claimed(config, stores[0]),
        )
    scores = canary_scores(global_model, canary_x, canary_y)
    bound, tried = best_guess(scores, included, delta=config.delta, beta=config.beta)
    booked = stores[0].ledger.run_noise.get(0, 0.0)
    return AuditResult(
        config=config,
        claimed_epsilon=_claimed(config, stores[0]),
        noise_booked=booked,
        noise_trained=0.0 if config.fault == "no-noise" else booked,
        bound=bound,
        tried=tried,
        included=included,
        labels=canary_y,
        scores=scores,
        test_accuracy=accuracy,
        seconds=time.monotonic() - started,
    )


def _train_without_noise(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, dp: DPStep | None, **kwargs: Any
) -> LocalResult:
    """The ``no-noise`` fault: DP-SGD with noise multiplier 0 (clipping still on), while
    the history handed to the ledger books the configured noise."""
    assert dp is not None  # the fault needs DP (checked by AuditConfig)
    result = train_locally(model, x, y, dp=dataclasses.replace(dp, noise_multiplier=0.0), **kwargs)
    booked = [(dp.noise_multiplier, rate, steps) for _, rate, steps in result.history]
    return dataclasses.replace(result, history=booked)


def fedavg(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[int]
) -> dict[str, torch.Tensor]:
    """The weighted mean of the clients' weights, weighted by their example counts (FedAvg)."""
    share = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    averaged = {}
    for name, first in states[0].items():
        stacked = torch.stack([s[name].double() for s in states])
        averaged[name] = (share.view(-1, *[1] * first.dim()) * stacked).sum(0).to(first.dtype)
    return averaged


def _claimed(config: AuditConfig, store: MemoryStore) -> float:
    if not config.dp:
        return math.inf
    return store.ledger.epsilon(config.delta, config.accountant)


def _privacy_words(config: AuditConfig) -> str:
    if not config.dp:
        return "no DP (claims nothing)"
    words = (
        f"DP-SGD to a budget of ε={config.target_epsilon:g} (δ={config.delta:g}, "
        f"{config.accountant.upper()}), clipping at {config.max_grad_norm:g}"
    )
    if config.fault == "no-noise":
        words += "; FAULT no-noise: trains with noise multiplier 0, books the configured one"
    return words
