"""The run folder: everything a finished (or stopped) run leaves behind.

    config.json            the resolved run settings
    metrics.jsonl          one line per round (accuracy, loss, epsilons, timing)
    privacy_ledger.jsonl   one line per client per round ("example-level": its
                           cumulative and this-round epsilon, delta, accountant,
                           noise, steps), and one per round for the federation
                           ("client-level": cumulative epsilon, noise, clip)
    summary.json           final figures and where everything is
    accuracy_epsilon.png   test accuracy and cumulative epsilon per round
    model.safetensors      the final global weights (model config in metadata)

Files are written atomically (temp file + rename); an existing non-empty
folder is refused, so nothing already saved is overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fedpriv.server.loop import RoundRecord
from fedpriv.shared_models.checkpoint import save_checkpoint
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.plumbing.atomic import atomic_write, atomic_write_json, json_safe
from fedpriv.shared_models.registry import ModelConfig

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
LEDGER_FILE = "privacy_ledger.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "accuracy_epsilon.png"
MODEL_FILE = "model.safetensors"


class RunFolder:
    """Writes one run's artefacts into ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, path: Path) -> RunFolder:
        """Make ``path`` (parents too); refuse one that already holds files."""
        path = path.expanduser().resolve()
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"output folder {path} already exists and is not empty; "
                "choose another --out (nothing was overwritten)"
            )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(
                f"cannot create output folder {path} ({err.strerror}); choose another --out"
            ) from None
        return cls(path)

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / CONFIG_FILE, config)

    @classmethod
    def open_existing(cls, path: Path) -> RunFolder:
        """An existing run folder, to resume: it must hold the run's ``config.json``."""
        path = path.expanduser().resolve()
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(f"{path} is not a run folder to resume: it has no {CONFIG_FILE}")
        return cls(path)

    def read_config(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {self.path / CONFIG_FILE}: {err}") from None

    def append_rows(self, metrics_row: dict[str, Any], ledger_rows: list[dict[str, Any]]) -> None:
        _append_jsonl(self.path / METRICS_FILE, [metrics_row])
        if ledger_rows:
            _append_jsonl(self.path / LEDGER_FILE, ledger_rows)

    def rewrite_history(
        self, metrics_rows: list[dict[str, Any]], ledger_rows: list[dict[str, Any]]
    ) -> None:
        """Make ``metrics.jsonl`` and ``privacy_ledger.jsonl`` hold exactly these rows (atomically).

        On resume: rows of a round that ran after the last checkpoint are dropped,
        because that round runs again.
        """
        for name, rows in ((METRICS_FILE, metrics_rows), (LEDGER_FILE, ledger_rows)):
            text = "".join(
                json.dumps(json_safe(r), default=str, allow_nan=False) + "\n" for r in rows
            )
            atomic_write(self.path / name, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary)

    def save_model(
        self,
        state_dict: dict[str, torch.Tensor],
        model_config: ModelConfig,
        *,
        vocab: str | None = None,
    ) -> Path:
        return save_checkpoint(self.path / MODEL_FILE, state_dict, model_config, vocab=vocab)


def round_rows(
    record: RoundRecord, client_level: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A round's ``metrics.jsonl`` row and ``privacy_ledger.jsonl`` rows.

    ``client_level`` (delta, accountant, noise multiplier, mode) goes with the
    federation's client-level row, when the run has client-level DP.
    """
    ledger_rows = [
        {
            "round": record.round,
            "guarantee": "example-level" if r.dp_enabled else "none",
            **r.as_dict(),
            "update_accepted": r.partition_id not in record.rejected_clients,
        }
        for r in record.reports
    ]
    if client_level is not None and record.client_epsilon is not None:
        ledger_rows.append(
            {
                "round": record.round,
                "guarantee": "client-level",
                **client_level,
                "epsilon": record.client_epsilon,
                "clipping_norm": record.client_clipping_norm,
                "clients": record.trained,
            }
        )
    return json_safe(record.as_row()), json_safe(ledger_rows)


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "a") as fh:
        for row in rows:
            fh.write(json.dumps(json_safe(row), default=str, allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
