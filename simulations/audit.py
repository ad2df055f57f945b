"""An empirical lower bound on epsilon from one training run (``fedpriv-sim audit``).

One-run auditing after Steinke, Nasr and Jagielski, "Privacy Auditing with One
(1) Training Run" (NeurIPS 2023, arXiv:2305.08846). Each of ``m`` canaries goes
into client 0's training data independently with probability 1/2; a small
federation trains with the product's own DP-SGD code (``train_locally`` with a
``DPStep``, noise from ``noise_for_target``, epsilon from the client's
``PrivacyLedger``); a membership attack on the final global model guesses which
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

import logging
import math
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from torch import nn

from client.privacy import PrivacyLedger, noise_for_target, plan_round
from client.training import DPStep, train_locally
from server.run_folder import RunFolder, write_json_atomic
from shared_models.config import ACCOUNTANTS
from shared_models.errors import ConfigError
from shared_models.evaluation import evaluate_model
from shared_models.registry import ModelConfig, build_model
from simulations.audit_bound import (
    Guess,
    best_guess,
)
from simulations.datasets import load_dataset

logger = logging.getLogger(__name__)

FAULTS: tuple[str, ...] = ("none", "no-noise")
AUDIT_FILE = "audit.json"
PLOT_FILE = "audit_scores.png"
EXIT_CLAIM_FALSE = 3  # the command's exit code when the bound exceeds the claimed epsilon
NUM_CLASSES = 10  # digits
CANARY_SIDE = 4  # canary images are drawn at 4x4 and upsampled to the digits' 8x8
MODEL = ModelConfig(name="cnn", num_classes=NUM_CLASSES, in_channels=1, image_size=8)


@dataclass(frozen=True)
class AuditConfig:
    """The settings of one audit; validated on construction.

    The defaults make a broken run (``fault="no-noise"``) fail and a correct
    one pass, in about ten seconds each on two CPU cores.

    Args:
        canaries: m (>= 2); the bound cannot exceed about 5.8 with 1,000.
        target_epsilon: client 0's cumulative epsilon budget for the run, at
            ``delta``; every client's noise multiplier is derived from it.
        dp: train with DP-SGD; ``False`` trains plain SGD and claims nothing.
        fault: ``"none"``, or ``"no-noise"``: train with noise multiplier 0
            (clipping still on) while the ledger books the configured one.
        clients: clients of the federation (>= 1); client 0 holds the canaries.
        examples_per_client: real digits each client holds, besides canaries.
        beta: 1 - confidence of the bound, in (0, 1).
    """

    canaries: int = 1000
    target_epsilon: float = 2.0
    dp: bool = True
    fault: str = "none"
    clients: int = 2
    examples_per_client: int = 200
    rounds: int = 2
    local_epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 0.5
    momentum: float = 0.9
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    beta: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.canaries < 2:
            raise ConfigError(f"canaries must be >= 2, got {self.canaries}")
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigError(
                f"target epsilon must be a positive number, got {self.target_epsilon}"
            )
        if self.fault not in FAULTS:
            raise ConfigError(f"unknown fault {self.fault!r}; choose one of: {', '.join(FAULTS)}")
        if not self.dp and self.fault != "none":
            raise ConfigError(f"--fault {self.fault} breaks DP training: drop --no-dp")
        for name in ("clients", "examples_per_client", "rounds", "local_epochs", "batch_size"):
            if getattr(self, name) < 1:
                flag = name.replace("_", "-")
                raise ConfigError(f"{flag} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "max_grad_norm"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ConfigError(
                    f"{name.replace('_', '-')} must be > 0, got {getattr(self, name)}"
                )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if not 0 < self.beta < 1:
            raise ConfigError(f"beta (1 - confidence) must be in (0, 1), got {self.beta}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"unknown accountant '{self.accountant}'; choose one of: {', '.join(ACCOUNTANTS)}"
            )


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
            # (client/training.py says why), and its hooks fire on inputs that need
            # no gradient.
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
    clients = [(data.pool.x[p], data.pool.y[p]) for p in parts]
    clients[0] = (
        np.concatenate([clients[0][0], canary_x[included]]),
        np.concatenate([clients[0][1], canary_y[included]]),
    )
    ledgers = [_ledger(config, len(y)) for _, y in clients]  # an impossible budget fails here
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
        states = [
            _train_client(config, global_model, x, y, ledgers[cid], cid, rnd)
            for cid, (x, y) in enumerate(clients)
        ]
        global_model.load_state_dict(fedavg(states, [len(y) for _, y in clients]))
        _, accuracy = evaluate_model(global_model, data.test.x, data.test.y)
        logger.info(
            "round %d/%d: test accuracy %.3f; client 0 has spent ε=%.3f",
            rnd,
            config.rounds,
            accuracy,
            _claimed(ledgers[0]),
        )
    scores = canary_scores(global_model, canary_x, canary_y)
    bound, tried = best_guess(scores, included, delta=config.delta, beta=config.beta)
    ledger = ledgers[0]
    booked = (ledger.noise_multiplier or 0.0) if ledger is not None else 0.0
    return AuditResult(
        config=config,
        claimed_epsilon=_claimed(ledger),
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


def write_report(result: AuditResult, folder: Path) -> tuple[Path, Path]:
    """Write ``audit.json`` and a histogram of the canaries' scores into ``folder``."""
    json_path = folder / AUDIT_FILE
    write_json_atomic(json_path, result.as_dict())
    return json_path, _plot_scores(result, folder / PLOT_FILE)


def _plot_scores(result: AuditResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.histogram_bin_edges(result.scores, bins=40).tolist()
    ax.hist(result.scores[result.included], bins=bins, alpha=0.6, label="included (in training)")
    ax.hist(result.scores[~result.included], bins=bins, alpha=0.6, label="excluded")
    claim = "∞" if math.isinf(result.claimed_epsilon) else f"{result.claimed_epsilon:.3f}"
    ax.set(
        xlabel="score (label logit minus the image's mean logit)",
        ylabel="canaries",
        title=f"claimed ε={claim}, empirical lower bound ε ≥ {result.bound.epsilon:.3f}",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _ledger(config: AuditConfig, num_examples: int) -> PrivacyLedger | None:
    """A client's ledger with its noise multiplier for the budget (as the ClientApp derives it)."""
    if not config.dp:
        return None
    noise = noise_for_target(
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        plan=plan_round(num_examples, config.batch_size, config.local_epochs),
        rounds=config.rounds,
        accountant=config.accountant,
    )
    return PrivacyLedger(
        accountant=config.accountant,
        delta=config.delta,
        budget=config.target_epsilon,
        noise_multiplier=noise,
    )


def _claimed(ledger: PrivacyLedger | None) -> float:
    return math.inf if ledger is None else ledger.epsilon()


def _train_client(
    config: AuditConfig,
    global_model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    ledger: PrivacyLedger | None,
    cid: int,
    rnd: int,
) -> dict[str, torch.Tensor]:
    """One client's round as the ClientApp runs it: budget check, DP-SGD, ledger."""
    step: DPStep | None = None
    booked = 0.0
    if ledger is not None:
        booked = ledger.noise_multiplier or 0.0
        ledger.check_budget(booked, plan_round(len(x), config.batch_size, config.local_epochs))
        trained = 0.0 if config.fault == "no-noise" else booked
        step = DPStep(trained, config.max_grad_norm, config.accountant)
    model = build_model(MODEL)
    model.load_state_dict(global_model.state_dict())
    result = train_locally(
        model,
        x,
        y,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        dp=step,
        device=torch.device("cpu"),
        seed=config.seed * 1_000_003 + cid * 1009 + rnd,
    )
    if ledger is not None:
        for sigma, rate, steps in result.history:
            # The fault: the ledger books the configured noise, not the noise added.
            ledger.record(booked if config.fault == "no-noise" else sigma, rate, steps)
    return result.state_dict


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


# -- the command: `fedpriv-sim audit` --

_D = AuditConfig()
audit_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@audit_app.command(
    help="Audit the DP training: train a small digits federation with canaries in client 0's "
    "data, attack the final model, and turn the attack's correct guesses into an empirical "
    "lower bound on epsilon (one-run audit of Steinke, Nasr and Jagielski 2023). Prints one "
    "summary line. Exit code 0: the bound stays at or below the claimed epsilon; 3: it exceeds "
    "it (the privacy claim is false); 1 or 2: bad input."
)
def audit(
    canaries: Annotated[
        int, typer.Option(help="canaries, each in client 0's data with probability 1/2")
    ] = _D.canaries,
    target_epsilon: Annotated[
        float, typer.Option(help="client 0's cumulative epsilon budget: the claim audited")
    ] = _D.target_epsilon,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="train without DP (claims ε=∞)")] = False,
    fault: Annotated[
        str,
        typer.Option(
            help="none | no-noise: a deliberate bug, training with noise multiplier 0 "
            "(clipping on) while the ledger books the configured noise"
        ),
    ] = _D.fault,
    clients: Annotated[int, typer.Option(help="clients; client 0 holds the canaries")] = (
        _D.clients
    ),
    examples_per_client: Annotated[
        int, typer.Option(help="real digits per client, besides the canaries")
    ] = _D.examples_per_client,
    rounds: Annotated[int, typer.Option(help="federated rounds")] = _D.rounds,
    local_epochs: Annotated[int, typer.Option(help="local epochs per round")] = _D.local_epochs,
    batch_size: Annotated[int, typer.Option(help="expected local batch size")] = _D.batch_size,
    lr: Annotated[float, typer.Option(help="client learning rate (SGD)")] = _D.learning_rate,
    momentum: Annotated[float, typer.Option(help="client SGD momentum")] = _D.momentum,
    max_grad_norm: Annotated[
        float, typer.Option(help="per-sample clipping norm C")
    ] = _D.max_grad_norm,
    delta: Annotated[float, typer.Option(help="delta of the claim and the bound")] = _D.delta,
    accountant: Annotated[str, typer.Option(help="rdp | prv")] = _D.accountant,
    beta: Annotated[float, typer.Option(help="1 - confidence of the bound")] = _D.beta,
    seed: Annotated[int, typer.Option(help="seed of canaries, membership, data and noise")] = (
        _D.seed
    ),
    out: Annotated[
        Path | None,
        typer.Option(help="folder for audit.json and the score histogram (new or empty)"),
    ] = None,
) -> None:
    config = AuditConfig(
        canaries=canaries,
        target_epsilon=target_epsilon,
        dp=not no_dp,
        fault=fault,
        clients=clients,
        examples_per_client=examples_per_client,
        rounds=rounds,
        local_epochs=local_epochs,
        batch_size=batch_size,
        learning_rate=lr,
        momentum=momentum,
        max_grad_norm=max_grad_norm,
        delta=delta,
        accountant=accountant,
        beta=beta,
        seed=seed,
    )
    folder = RunFolder.create(out) if out is not None else None  # refuses a non-empty one
    result = run_audit(config)
    if folder is not None:
        paths = write_report(result, folder.path)
        logger.info("wrote %s", " and ".join(str(p) for p in paths))
    typer.echo(result.summary())
    if not result.passed:
        # sys.exit, not typer.Exit: run_command runs click with standalone_mode=False,
        # where click returns an Exit's code instead of exiting with it.
        sys.exit(EXIT_CLAIM_FALSE)
