"""The ServerApp: FedAvg (or another strategy) over DP-SGD clients.

Each round it trains on the sampled clients, evaluates on a sample of the
clients' held-out splits and on the central test set, prints one line of
progress, and appends to the run folder. When the run ends it saves the final
weights, the plot and the summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import flwr
import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from torch import nn

from client.local_data import load_test_data
from server.client_dp import ClientLevelLedger, train_config, wrap_client_dp
from server.loop import RoundRecord, run_rounds
from server.plots import plot_accuracy_epsilon
from server.round_checkpoint import (
    RoundState,
    load_latest,
    restore_rng,
    restore_strategy_state,
    rng_state,
    save_round,
    strategy_state,
)
from server.run_folder import PLOT_FILE, RunFolder, round_rows
from server.strategies import build_strategy
from shared_models.checkpoint import apply_checkpoint, freeze, load_checkpoint
from shared_models.config import RunConfig
from shared_models.errors import ConfigError, FederationError
from shared_models.evaluation import evaluate_model
from shared_models.registry import ModelConfig, build_model

logger = logging.getLogger(__name__)

ACCOUNTANT_NAMES = {"rdp": "RDP (Opacus RDPAccountant)", "prv": "PRV (Opacus PRVAccountant)"}


@dataclass(frozen=True)
class CentralData:
    """The coordinator's held-out test set and the model everyone trains."""

    model_config: ModelConfig
    x_test: np.ndarray
    y_test: np.ndarray
    vocab: str | None = None  # the text tokeniser, as JSON; None for images


CentralDataFn = Callable[[RunConfig], CentralData]


def load_central_data(cfg: RunConfig) -> CentralData:
    """The test set only the coordinator holds.

    In a deployment, the ``test-data`` folder (role ``server``, written by
    ``fedpriv-client export-demo-data`` or ``client.local_data.write_test_data``);
    otherwise (``flwr run .`` in simulation) the simulated dataset's test split.
    """
    if not cfg.test_data:
        from simulations.apps import load_central_data as simulated  # late: simulation only

        return simulated(cfg)
    model_config, x_test, y_test, vocab = load_test_data(Path(cfg.test_data), model=cfg.model)
    return CentralData(model_config, x_test, y_test, vocab)


def epsilon_label(config: RunConfig) -> str | None:
    """How every example-level epsilon of this run is labelled; ``None`` without it."""
    if not config.dp.enabled:
        return None
    return f"example-level, cumulative, δ={config.dp.delta:g}, {config.dp.accountant.upper()}"


def client_epsilon_label(config: RunConfig) -> str | None:
    """How the client-level epsilon of this run is labelled; ``None`` without it."""
    if not config.client_dp.enabled:
        return None
    return (
        f"client-level, cumulative, δ={config.dp.delta:g}, {config.dp.accountant.upper()}, "
        "no sampling amplification"
    )


def build_server_app(
    load_central: CentralDataFn,
    config: RunConfig | None = None,
    run_dir: Path | None = None,
) -> ServerApp:
    """A ServerApp that runs the federation described by ``config``.

    Args:
        load_central: gives the central test set and the model config.
        config: the run's settings; ``None`` reads ``context.run_config``.
        run_dir: where to write the run folder; ``None`` takes the ``run-dir``
            setting, or makes ``./runs/<timestamp>-<model>-<dataset>``.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        if config is None:  # started by Flower (`flwr run`): this is the entry point
            _show_progress()
        cfg = config if config is not None else RunConfig.from_run_config(context.run_config)
        where = run_dir or (Path(cfg.run_dir) if cfg.run_dir else _default_run_dir(cfg))
        run_federation(grid, cfg, load_central(cfg), where)

    return app


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
    label = epsilon_label(cfg)
    client_label = client_epsilon_label(cfg)
    strategy = build_strategy(cfg)
    client_ledger = None
    if cfg.client_dp.enabled:
        client_ledger = ClientLevelLedger.for_run(cfg.client_dp, cfg.dp, cfg.rounds)
        strategy = wrap_client_dp(
            strategy, cfg.client_dp, client_ledger.noise_multiplier, cfg.min_available_nodes
        )
    model_config = central.model_config.to_dict()
    if cfg.resume:
        folder = RunFolder.open_existing(Path(cfg.resume))
        resumed = check_resume(folder, cfg, model, model_config)
        # Rows of a round after the checkpoint go: that round runs again.
        folder.rewrite_history(resumed.metrics_rows, resumed.ledger_rows)
        restore_strategy_state(strategy, resumed.strategy_arrays, resumed.strategy_scalars)
        if client_ledger is not None and resumed.client_ledger is not None:
            client_ledger = ClientLevelLedger.from_state_dict(resumed.client_ledger)
        restore_rng(resumed.rng)
        history = [_record_from_row(row) for row in resumed.metrics_rows]
        metrics_rows, ledger_rows = list(resumed.metrics_rows), list(resumed.ledger_rows)
        initial_arrays, start_round = resumed.arrays, resumed.round + 1
        latest_epsilon = resumed.latest_epsilon
        logger.info(
            "resuming %s from %s: round %d of %d next",
            folder.path,
            resumed.path.name if resumed.path else "?",
            start_round,
            cfg.rounds,
        )
    else:
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
        history, metrics_rows, ledger_rows = [], [], []
        initial_arrays, start_round, latest_epsilon = ArrayRecord(model.state_dict()), 1, {}

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
        metrics_rows.append(metrics_row)
        ledger_rows.extend(new_ledger_rows)
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
                metrics_rows=metrics_rows,
                ledger_rows=ledger_rows,
            ),
            keep=cfg.keep_checkpoints,
        )
        folder.append_rows(metrics_row, new_ledger_rows)
        logger.info("%s", progress_line(record, cfg, label, client_label))

    logger.info("run folder: %s", folder.path)
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
    result = run_rounds(
        strategy,
        grid,
        initial_arrays=initial_arrays,
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
        start_round=start_round,
        latest_epsilon=latest_epsilon,
    )
    result.rounds = history + result.rounds
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
    last = result.rounds[-1] if result.rounds else None
    summary = {
        "rounds_planned": cfg.rounds,
        "rounds_completed": sum(1 for r in result.rounds if r.trained > 0),
        "stopped_early": result.stopped_early,
        "failed": result.failed,
        "test_accuracy": last.test_accuracy if last else None,
        "test_loss": last.test_loss if last else None,
        "privacy": {
            "guarantee": (
                "example-level DP of each client's records (DP-SGD), cumulative over all "
                "rounds (a node with a ledger file: over all runs on its data)"
                if cfg.dp.enabled
                else "none (--no-dp)"
            ),
            "epsilon_max": last.epsilon_max if last else None,
            "epsilon_mean": last.epsilon_mean if last else None,
            "delta": cfg.dp.delta if cfg.dp.enabled else None,
            "accountant": ACCOUNTANT_NAMES[cfg.dp.accountant] if cfg.dp.enabled else None,
            "target_epsilon": cfg.dp.target_epsilon if cfg.dp.enabled else None,
            "client_level": _client_level_summary(cfg, client_ledger),
        },
        "resumed_after_round": start_round - 1 if cfg.resume else None,
        "wall_seconds": round(time.monotonic() - started, 2),
        "model_file": model_path.name,
        "run_dir": str(folder.path),
    }
    folder.write_summary(summary)
    if result.failed:  # saved first: the run's status must say it failed
        raise FederationError(f"{result.stopped_early}; run folder {folder.path}")
    return summary


def resume_config(run_dir: Path, **overrides: object) -> RunConfig:
    """The settings of the run in ``run_dir``, set to resume it (``overrides``: e.g. device)."""
    folder = RunFolder.open_existing(run_dir)
    return dataclasses.replace(
        _saved_run_config(folder),
        resume=str(folder.path),
        run_dir=str(folder.path),
        **overrides,  # type: ignore[arg-type]
    )


def _saved_run_config(folder: RunFolder, saved: dict | None = None) -> RunConfig:
    """The run settings in ``folder``'s config.json (``saved``: its content, if read already)."""
    try:
        return RunConfig.from_run_config((saved or folder.read_config())["run"])
    except (KeyError, TypeError, ConfigError) as err:
        raise ConfigError(
            f"{folder.path / 'config.json'} holds no valid run settings: {err}"
        ) from None


def check_resume(
    folder: RunFolder, cfg: RunConfig, model: nn.Module, model_config: dict
) -> RoundState:
    """The newest checkpoint of ``folder``, after checking it belongs to this run and model.

    Changes nothing: the commands call it up front, before anything starts.
    """
    saved = folder.read_config()
    if _saved_run_config(folder, saved).identity() != cfg.identity():
        raise ConfigError(
            f"the settings differ from those {folder.path} was started with; resume with the "
            "run's own settings"
        )
    if saved.get("model") != model_config:
        raise ConfigError(f"{folder.path} was run with another model: refusing to resume")
    state = load_latest(folder.path, run_config=cfg.identity(), model_config=model_config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.arrays.items()}
    if expected != found:
        raise ConfigError(f"checkpoint {state.path} does not fit the model: refusing to resume")
    return state


def _record_from_row(row: dict) -> RoundRecord:
    names = {f.name for f in dataclasses.fields(RoundRecord)}
    return RoundRecord(**{k: v for k, v in row.items() if k in names})


def initial_model(cfg: RunConfig, central: CentralData) -> tuple[nn.Module, dict | None]:
    """The global model before round 1, and where its weights came from.

    Also checks the ``freeze`` prefixes against the model, so that a typo fails
    before any client starts.
    """
    model = build_model(central.model_config)
    if cfg.frozen_prefixes:
        freeze(build_model(central.model_config), cfg.frozen_prefixes)
    if not cfg.init_checkpoint:
        return model, None
    checkpoint = load_checkpoint(Path(cfg.init_checkpoint))
    fresh = apply_checkpoint(model, checkpoint, central.model_config, vocab=central.vocab)
    return model, {
        "path": str(checkpoint.path.resolve()),
        "sha256": hashlib.sha256(checkpoint.path.read_bytes()).hexdigest(),
        "not_loaded": fresh,
    }


def _client_level_summary(cfg: RunConfig, ledger: ClientLevelLedger | None) -> dict | None:
    if ledger is None:
        return None
    return {
        "guarantee": (
            "client-level DP of each client's whole participation (clipped updates, "
            "Gaussian noise on their mean), cumulative over all rounds, no sampling amplification"
        ),
        "mode": cfg.client_dp.mode,
        "epsilon": ledger.epsilon(),
        "delta": ledger.delta,
        "accountant": ACCOUNTANT_NAMES[ledger.accountant],
        "noise_multiplier": ledger.noise_multiplier,
        "releases": ledger.releases,
        "budget": ledger.budget,
    }


def privacy_summary_text(summary: dict) -> str:
    """The final privacy figures of a run's ``summary.json``, labelled, in one phrase."""
    privacy = summary["privacy"]
    parts = []
    if privacy["epsilon_max"] is not None:
        parts.append(
            f"client ε max {privacy['epsilon_max']:.3f}, mean {privacy['epsilon_mean']:.3f} "
            f"[example-level, cumulative, δ={privacy['delta']:g}, "
            f"{privacy['accountant'].split()[0]}]"
        )
    client = privacy.get("client_level")
    if client is not None:
        parts.append(
            f"federation ε {client['epsilon']:.3f} [client-level, cumulative, "
            f"δ={client['delta']:g}, {client['accountant'].split()[0]}, "
            "no sampling amplification]"
        )
    return "; ".join(parts) or "no DP"


def progress_line(
    record: RoundRecord, cfg: RunConfig, label: str | None, client_label: str | None = None
) -> str:
    """One line per round, as shown on screen."""
    acc = "n/a" if record.test_accuracy is None else f"{record.test_accuracy:.3f}"
    loss = "n/a" if record.test_loss is None else f"{record.test_loss:.3f}"
    if label is None:
        privacy = "no DP" if client_label is None else "no example-level DP"
    elif record.epsilon_max is None:
        privacy = "ε: nothing spent yet"
    else:
        privacy = f"client ε max {record.epsilon_max:.3f} mean {record.epsilon_mean:.3f} [{label}]"
    if client_label is not None and record.client_epsilon is not None:
        clip = record.client_clipping_norm
        clip_words = f", clip {clip:.3g}" if cfg.client_dp.adaptive and clip is not None else ""
        privacy += f" | federation ε {record.client_epsilon:.3f}{clip_words} [{client_label}]"
    extra = f", {record.declined} declined" if record.declined else ""
    extra += f", {record.rejected} rejected" if record.rejected else ""
    extra += f", {record.failed} failed" if record.failed else ""
    return (
        f"round {record.round}/{cfg.rounds}: test acc {acc} loss {loss} | {privacy} | "
        f"{record.trained} trained{extra} | {record.seconds:.1f}s"
    )


def _show_progress() -> None:
    """Send this package's progress lines to stderr, once, under ``flwr run``."""
    log = logging.getLogger("server")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("fedpriv: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model}-{cfg.dataset}"


# What `flwr run` and `fedpriv-server start` run (`[tool.flwr.app.components]`).
app = build_server_app(load_central_data)
