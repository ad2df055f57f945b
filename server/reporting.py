"""How a run's figures are shown: labels, the per-round line, the summary.

Every epsilon on screen, in ``summary.json`` and on the plot carries its label:
which guarantee (example-level or client-level), that it is cumulative, its
delta and its accountant.
"""

from __future__ import annotations

from typing import Any

from fedpriv.server.client_dp import ClientLevelLedger
from fedpriv.server.loop import LoopResult, RoundRecord
from fedpriv.shared_models.config import RunConfig

ACCOUNTANT_NAMES = {"rdp": "RDP (Opacus RDPAccountant)", "prv": "PRV (Opacus PRVAccountant)"}


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


def run_summary(
    cfg: RunConfig,
    result: LoopResult,
    client_ledger: ClientLevelLedger | None,
    *,
    resumed_after: int | None,
    wall_seconds: float,
    model_file: str,
    run_dir: str,
) -> dict[str, Any]:
    """What ``summary.json`` holds: final accuracy, privacy spent (labelled), why it stopped."""
    last = result.rounds[-1] if result.rounds else None
    return {
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
            "client_level": client_level_summary(cfg, client_ledger),
        },
        "resumed_after_round": resumed_after,
        "wall_seconds": round(wall_seconds, 2),
        "model_file": model_file,
        "run_dir": run_dir,
    }


def client_level_summary(cfg: RunConfig, ledger: ClientLevelLedger | None) -> dict | None:
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
