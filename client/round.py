"""One client round: budget check, DP-SGD, ledger record, report.

The ClientApp (:mod:`fedpriv.client.app`), the audit
(:mod:`fedpriv.simulations.audit`) and the benchmarks all train through
:func:`client_round`, so what is audited and measured is what a node runs:

1. plan the round's DP-SGD steps and sampling rate for this client's data;
2. take this run's noise multiplier (fixed at the node's first round of the
   run, kept across restarts in the ledger), given or derived from the target;
3. check that one more round keeps the ledger's lifetime epsilon within the
   lower of the run's target and the node's own budget, else decline
   (:class:`~fedpriv.shared_models.errors.PrivacyBudgetError`) with the
   ledger untouched;
4. train (:func:`fedpriv.client.training.train_locally`);
5. record the steps Opacus actually took in the ledger and save it, before
   anything leaves the node;
6. report the lifetime and this round's epsilon, and the trained tensors only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedpriv.client.data import ClientData
from fedpriv.client.ledger_store import LedgerStore
from fedpriv.client.training import DPStep, LocalResult, train_locally
from fedpriv.shared_models.accounting import compute_epsilon, noise_for_target, plan_round
from fedpriv.shared_models.checkpoint import freeze
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.ledger import check_round
from fedpriv.shared_models.messages import TrainReport

logger = logging.getLogger(__name__)

#: How a round trains: :func:`fedpriv.client.training.train_locally`'s signature.
TrainFn = Callable[..., LocalResult]


@dataclass(frozen=True)
class RoundResult:
    """What a round sends back: the trained tensors (frozen ones left out) and the report."""

    update: dict[str, torch.Tensor]
    report: TrainReport


def client_round(
    model: nn.Module,
    data: ClientData,
    cfg: RunConfig,
    *,
    store: LedgerStore | None,
    run_id: int,
    server_round: int,
    device: torch.device,
    seed: int,
    node_budget: float | None = None,
    train: TrainFn = train_locally,
) -> RoundResult:
    """Train ``model`` (holding the global weights) for one round on ``data``.

    Args:
        model: the global model, in place; its frozen prefixes are frozen here.
        data: this client's data.
        cfg: the run's settings.
        store: where the client's privacy ledger lives; required with DP.
        run_id: the Flower run id the spend is booked under.
        server_round: the round number.
        device: where to train.
        seed: seeds batch sampling and noise.
        node_budget: the node's own cap on its lifetime epsilon (``None``: the
            one stored in its ledger, if any).
        train: the training loop (the audit swaps in a deliberately broken one).

    Raises:
        PrivacyBudgetError: the round would overspend; nothing was trained or saved.
        LedgerError: the ledger cannot be read or saved; no reply may leave.
    """
    plan = plan_round(len(data.x_train), cfg.batch_size, cfg.local_epochs)
    dp_step: DPStep | None = None
    ledger = None
    if cfg.dp.enabled:
        if store is None:
            raise ValueError("a DP round needs a ledger store")
        ledger = store.load()
        if node_budget is not None:
            ledger.node_budget = node_budget
        noise = ledger.run_noise.get(run_id) or cfg.dp.noise_multiplier
        if noise is None:
            noise = noise_for_target(
                target_epsilon=cfg.dp.target_epsilon,  # type: ignore[arg-type]
                delta=cfg.dp.delta,
                plan=plan,
                rounds=cfg.rounds,
                accountant=cfg.dp.accountant,
            )
        check_round(
            ledger,
            noise_multiplier=noise,
            plan=plan,
            delta=cfg.dp.delta,
            accountant=cfg.dp.accountant,
            run_budget=cfg.dp.target_epsilon,
        )
        dp_step = DPStep(noise, cfg.dp.max_grad_norm, cfg.dp.accountant)
    if cfg.frozen_prefixes:
        freeze(model, cfg.frozen_prefixes)
    result = train(
        model,
        data.x_train,
        data.y_train,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        dp=dp_step,
        device=device,
        seed=seed,
    )
    epsilon = epsilon_round = float("inf")
    if ledger is not None and dp_step is not None and store is not None:
        for sigma, rate, steps in result.history:
            ledger.record(
                run_id=run_id,
                server_round=server_round,
                noise_multiplier=sigma,
                sample_rate=rate,
                steps=steps,
            )
        ledger.run_noise.setdefault(run_id, dp_step.noise_multiplier)
        store.save(ledger)  # before anything leaves the node
        epsilon = ledger.epsilon(cfg.dp.delta, cfg.dp.accountant)
        epsilon_round = compute_epsilon(result.history, cfg.dp.delta, cfg.dp.accountant)
    report = TrainReport(
        num_examples=result.num_examples,
        train_loss=result.mean_loss,
        epsilon=epsilon,
        epsilon_round=epsilon_round,
        delta=cfg.dp.delta,
        noise_multiplier=dp_step.noise_multiplier if dp_step is not None else 0.0,
        sample_rate=plan.sample_rate,
        steps=result.steps,
        dp_enabled=cfg.dp.enabled,
        partition_id=data.partition_id,
        accountant=cfg.dp.accountant if cfg.dp.enabled else "none",
    )
    # Frozen tensors did not change: leave them out, the server keeps its own.
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    update = {k: v for k, v in result.state_dict.items() if k not in frozen}
    return RoundResult(update=update, report=report)
