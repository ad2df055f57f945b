"""One federated run at the coordinator: start or resume it, run the rounds, save everything.

Every round is checkpointed (:mod:`fedpriv.server.round_checkpoint`) before its
rows are appended to the run folder, so a crash loses at most the round in
progress; at the end the final model, the plot and ``summary.json`` are
written, also when the run stopped early.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flwr
import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpriv.server.central_data import CentralData
from fedpriv.server.client_dp import ClientLevelLedger, train_config, wrap_client_dp
from fedpriv.server.loop import RoundRecord, run_rounds
from fedpriv.server.model_init import initial_model
from fedpriv.server.plots import plot_accuracy_epsilon
from fedpriv.server.reporting import (
    client_epsilon_label,
    epsilon_label,
    progress_line,
    run_summary,
)
from fedpriv.server.resume import check_resume, record_from_row
from fedpriv.server.round_checkpoint import (
    RoundState,
    restore_rng,
    restore_strategy_state,
    rng_state,
    save_round,
    strategy_state,
)
from fedpriv.server.run_folder import PLOT_FILE, RunFolder, round_rows
from fedpriv.server.strategies import build_strategy
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import FederationError
from fedpriv.shared_models.evaluation import evaluate_model

logger = logging.getLogger(__name__)


@dataclass
class _Start:
    """Where the rounds start: round 1 of a new run, or the round after a checkpoint."""

    folder: RunFolder
    arrays: ArrayRecord
    round: int = 1
    history: list[RoundRecord] = field(default_factory=list)
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)
    ledger_rows: list[dict[str, Any]] = field(default_factory=list)
    latest_epsilon: dict[int, float] = field(default_factory=dict)


def run_federation(grid: Grid, cfg: RunConfig, central: CentralData, run_dir: Path) -> dict:
    """Run every round and write the run folder; return the summary.

    With ``cfg.resume`` set, continue that run folder from its newest round
    checkpoint instead: same round numbers, weights, strategy state, privacy
    ledger and random-number state; rounds already checkpointed are not redone.
    """
    started = time.monotonic()
    random.seed(cfg.seed)  # Flower samples nodes with the `random` module
    torch.manual_seed(cfg.seed)
    model, start_from = initial_model(cfg, central)
    label, client_label = epsilon_label(cfg), client_epsilon_label(cfg)
    strategy = build_strategy(cfg)
    client_ledger = None
    if cfg.client_dp.enabled:
        client_ledger = ClientLevelLedger.for_run(cfg.client_dp, cfg.dp, cfg.rounds)
        strategy = wrap_client_dp(
            strategy, cfg.client_dp, client_ledger.noise_multiplier, cfg.min_available_nodes
        )
    model_config = central.model_config.to_dict()
    if cfg.resume:
        start, client_ledger = _resume(cfg, model, model_config, strategy, client_ledger)
    else:
        start = _new_run(cfg, run_dir, model, model_config, start_from)
    folder = start.folder

    def central_evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate_model(model, central.x_test, central.y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    client_row = (
        None
        if client_ledger is None
        else {
            "delta": client_ledger.delta,
            "accountant": client_ledger.accountant,
            "noise_multiplier": client_ledger.noise_multiplier,
            "mode": cfg.client_dp.mode,
        }
    )

    def on_round(record: RoundRecord, arrays: ArrayRecord, latest: dict[int, float]) -> None:
        metrics_row, new_ledger_rows = round_rows(record, client_row)
        start.metrics_rows.append(metrics_row)
        start.ledger_rows.extend(new_ledger_rows)
        strategy_arrays, strategy_scalars = strategy_state(strategy)
        # The checkpoint first: a crash before the rows are appended loses nothing, since
        # resuming rewrites the rows from the checkpoint.
        save_round(
            folder.path,
            RoundState(
                round=record.round,
                arrays=arrays,
                run_config=cfg.identity(),
                model_config=model_config,
                strategy_arrays=strategy_arrays,
                strategy_scalars=strategy_scalars,
                client_ledger=client_ledger.state_dict() if client_ledger is not None else None,
                latest_epsilon=latest,
                rng=rng_state(),
                metrics_rows=start.metrics_rows,
                ledger_rows=start.ledger_rows,
            ),
            keep=cfg.keep_checkpoints,
        )
        folder.append_rows(metrics_row, new_ledger_rows)
        logger.info("%s", progress_line(record, cfg, label, client_label))

    logger.info("run folder: %s", folder.path)
    _log_start(cfg, client_ledger, client_label, start_from)
    result = run_rounds(
        strategy,
        grid,
        initial_arrays=start.arrays,
        num_rounds=cfg.rounds,
        timeout=cfg.round_timeout,
        expected_nodes=cfg.num_clients,
        min_nodes=cfg.min_available_nodes,
        evaluate_fn=central_evaluate,
        on_round=on_round,
        client_ledger=client_ledger,
        train_config=train_config(cfg.client_dp),
        frozen_prefixes=cfg.frozen_prefixes,
        max_update_norm=cfg.max_update_norm,
        start_round=start.round,
        latest_epsilon=start.latest_epsilon,
    )
    result.rounds = start.history + result.rounds
    model_path = folder.save_model(
        result.arrays.to_torch_state_dict(), central.model_config, vocab=central.vocab
    )
    plot_accuracy_epsilon(
        result.rounds,
        folder.path / PLOT_FILE,
        title=f"fedpriv: {cfg.model} on {cfg.dataset}, {cfg.num_clients} clients",
        epsilon_label=label,
        client_epsilon_label=client_label,
    )
    summary = run_summary(
        cfg,
        result,
        client_ledger,
        resumed_after=start.round - 1 if cfg.resume else None,
        wall_seconds=time.monotonic() - started,
        model_file=model_path.name,
        run_dir=str(folder.path),
    )
    folder.write_summary(summary)
    if result.failed:  # saved first: the run's status must say it failed
        raise FederationError(f"{result.stopped_early}; run folder {folder.path}")
    return summary


def _new_run(
    cfg: RunConfig,
    run_dir: Path,
    model: torch.nn.Module,
    model_config: dict[str, Any],
    start_from: dict | None,
) -> _Start:
    folder = RunFolder.create(run_dir)
    folder.write_config(
        {
            "run": cfg.to_run_config(),
            "model": model_config,
            "init_checkpoint": start_from,
            "flwr_version": flwr.__version__,
            "torch_version": torch.__version__,
        }
    )
    return _Start(folder=folder, arrays=ArrayRecord(model.state_dict()))


def _resume(
    cfg: RunConfig,
    model: torch.nn.Module,
    model_config: dict[str, Any],
    strategy: Strategy,
    client_ledger: ClientLevelLedger | None,
) -> tuple[_Start, ClientLevelLedger | None]:
    folder = RunFolder.open_existing(Path(cfg.resume))
    resumed = check_resume(folder, cfg, model, model_config)
    # Rows of a round after the checkpoint go: that round runs again.
    folder.rewrite_history(resumed.metrics_rows, resumed.ledger_rows)
    restore_strategy_state(strategy, resumed.strategy_arrays, resumed.strategy_scalars)
    if client_ledger is not None and resumed.client_ledger is not None:
        client_ledger = ClientLevelLedger.from_state_dict(resumed.client_ledger)
    restore_rng(resumed.rng)
    start = _Start(
        folder=folder,
        arrays=resumed.arrays,
        round=resumed.round + 1,
        history=[record_from_row(row) for row in resumed.metrics_rows],
        metrics_rows=list(resumed.metrics_rows),
        ledger_rows=list(resumed.ledger_rows),
        latest_epsilon=resumed.latest_epsilon,
    )
    logger.info(
        "resuming %s from %s: round %d of %d next",
        folder.path,
        resumed.path.name if resumed.path else "?",
        start.round,
        cfg.rounds,
    )
    return start, client_ledger


def _log_start(
    cfg: RunConfig,
    client_ledger: ClientLevelLedger | None,
    client_label: str | None,
    start_from: dict | None,
) -> None:
    if client_ledger is not None:
        logger.info(
            "client-level DP (%s): noise multiplier %.4g, clipping norm %g%s, budget %s [%s]",
            cfg.client_dp.mode,
            client_ledger.noise_multiplier,
            cfg.client_dp.clipping_norm,
            " (initial)" if cfg.client_dp.adaptive else "",
            "none" if client_ledger.budget is None else f"ε={client_ledger.budget:g}",
            client_label,
        )
    if start_from is not None and not cfg.resume:
        logger.info(
            "starting from checkpoint %s (sha256 %.12s, freshly initialised: %s)",
            start_from["path"],
            start_from["sha256"],
            start_from["not_loaded"] or "none",
        )
