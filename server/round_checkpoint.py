"""Round checkpoints: everything the coordinator needs to continue a run.

After every round the coordinator writes ``RUN_DIR/checkpoints/round-NNNNN.safetensors``
atomically (:mod:`fedpriv.shared_models.plumbing.atomic`) and keeps the newest ``keep`` of them.
One file holds:

- tensors ``model/<name>``: the global weights after the round;
- tensors ``strategy/<attr>/<key>``: the strategy's state (FedAdam/FedYogi/
  FedAdagrad moments ``m_t``/``v_t``, FedAvgM's ``momentum_vector``);
- metadata ``fedpriv-round-checkpoint`` (JSON): the round, the resolved run
  settings and model config it belongs to, scalar strategy state (the adaptive
  clipping norm), the federation's client-level ledger, each client's latest
  example-level epsilon, the random-number states (Python, NumPy, torch), the
  rows of ``metrics.jsonl`` and ``privacy_ledger.jsonl`` up to this round, and
  a SHA-256 of the tensors.

Resuming (:func:`load_latest`) takes the newest checkpoint. A checkpoint that
is corrupt, or that belongs to another run (other settings, other model), is
refused with a message naming the file; nothing is overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import Strategy
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.plumbing.atomic import atomic_path

CHECKPOINT_DIR = "checkpoints"
META_KEY = "fedpriv-round-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"round-(\d{5,})\.safetensors")
# Strategy state that is arrays: FedOpt's moments (dicts), FedAvgM's momentum (a list).
_ARRAY_STATE = ("m_t", "v_t", "momentum_vector")
# Strategy state that is a number: adaptive clipping's current norm.
_SCALAR_STATE = ("clipping_norm",)


class CheckpointError(DataError):
    """A round checkpoint cannot be read, or does not belong to this run."""


@dataclass
class RoundState:
    """What a round checkpoint holds, loaded."""

    round: int
    arrays: ArrayRecord
    run_config: dict[str, Any]
    model_config: dict[str, Any]
    strategy_arrays: dict[str, np.ndarray]
    strategy_scalars: dict[str, float]
    client_ledger: dict[str, Any] | None
    latest_epsilon: dict[int, float]
    rng: dict[str, Any]
    metrics_rows: list[dict[str, Any]]
    ledger_rows: list[dict[str, Any]]
    path: Path | None = None


def checkpoint_path(run_dir: Path, rnd: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"round-{rnd:05d}.safetensors"


def save_round(run_dir: Path, state: RoundState, *, keep: int) -> Path:
    """Write ``state`` atomically, then delete all but the newest ``keep`` checkpoints."""
    tensors = {f"model/{k}": np.ascontiguousarray(v.numpy()) for k, v in state.arrays.items()}
    tensors.update(
        {f"strategy/{k}": np.ascontiguousarray(v) for k, v in state.strategy_arrays.items()}
    )
    meta = {
        "version": FORMAT_VERSION,
        "round": state.round,
        "run_config": state.run_config,
        "model_config": state.model_config,
        "strategy_scalars": state.strategy_scalars,
        "client_ledger": state.client_ledger,
        "latest_epsilon": {str(k): v for k, v in state.latest_epsilon.items()},
        "rng": state.rng,
        "metrics_rows": state.metrics_rows,
        "ledger_rows": state.ledger_rows,
        "sha256": _digest(tensors),
    }
    path = checkpoint_path(run_dir, state.round)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta, allow_nan=False)})
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's round checkpoints, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def load_round(path: Path) -> RoundState:
    """Read one checkpoint; :class:`CheckpointError` if it is not a whole, valid one."""
    try:
        with safe_open(path, framework="numpy") as fh:
            metadata = fh.metadata() or {}
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        meta = json.loads(metadata[META_KEY])
    except (SafetensorError, OSError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is left as it "
            "is. Move it aside to resume from the one before it"
        ) from None
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {meta.get('version')}, expected {FORMAT_VERSION}"
        )
    if meta.get("sha256") != _digest(tensors):
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its tensors do not match their SHA-256; it is left "
            "as it is. Move it aside to resume from the one before it"
        )
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    strategy = {k[len("strategy/") :]: v for k, v in tensors.items() if k.startswith("strategy/")}
    return RoundState(
        round=int(meta["round"]),
        arrays=ArrayRecord({k: Array(v) for k, v in model.items()}),
        run_config=meta["run_config"],
        model_config=meta["model_config"],
        strategy_arrays=strategy,
        strategy_scalars={k: float(v) for k, v in meta["strategy_scalars"].items()},
        client_ledger=meta["client_ledger"],
        latest_epsilon={int(k): float(v) for k, v in meta["latest_epsilon"].items()},
        rng=meta["rng"],
        metrics_rows=meta["metrics_rows"],
        ledger_rows=meta["ledger_rows"],
        path=path,
    )


def load_latest(
    run_dir: Path, *, run_config: dict[str, Any], model_config: dict[str, Any]
) -> RoundState:
    """The newest checkpoint of ``run_dir``, checked against this run's settings and model."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(
            f"{run_dir} has no round checkpoints ({CHECKPOINT_DIR}/round-NNNNN.safetensors): "
            "nothing to resume (was round 1 ever completed?)"
        )
    state = load_round(found[-1])
    if state.model_config != model_config:
        raise CheckpointError(
            f"checkpoint {found[-1]} is for another model "
            f"({_diff(state.model_config, model_config)}); refusing to resume"
        )
    if state.run_config != run_config:
        raise CheckpointError(
            f"checkpoint {found[-1]} belongs to a run with other settings "
            f"({_diff(state.run_config, run_config)}); refusing to resume"
        )
    return state


# -- strategy state --


def strategy_state(strategy: Strategy) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The arrays and numbers a strategy (and any strategy it wraps) carries between rounds."""
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, float] = {}
    for prefix, obj in _layers(strategy):
        for attr in _ARRAY_STATE:
            value = getattr(obj, attr, None)
            if isinstance(value, dict):
                arrays.update({f"{prefix}{attr}/{k}": np.asarray(v) for k, v in value.items()})
            elif isinstance(value, list):
                arrays.update({f"{prefix}{attr}/{i}": np.asarray(v) for i, v in enumerate(value)})
        for attr in _SCALAR_STATE:
            value = getattr(obj, attr, None)
            if isinstance(value, (int, float)):
                scalars[f"{prefix}{attr}"] = float(value)
    return arrays, scalars


def restore_strategy_state(
    strategy: Strategy, arrays: dict[str, np.ndarray], scalars: dict[str, float]
) -> None:
    """Put back what :func:`strategy_state` saved."""
    for prefix, obj in _layers(strategy):
        for attr in _ARRAY_STATE:
            head = f"{prefix}{attr}/"
            items = {k[len(head) :]: v for k, v in arrays.items() if k.startswith(head)}
            if not items:
                continue
            if attr == "momentum_vector":
                setattr(obj, attr, [items[str(i)] for i in range(len(items))])
            else:
                setattr(obj, attr, dict(items))
        for attr in _SCALAR_STATE:
            if f"{prefix}{attr}" in scalars:
                setattr(obj, attr, scalars[f"{prefix}{attr}"])


def _layers(strategy: Strategy) -> list[tuple[str, object]]:
    """The strategy and the strategies it wraps (Flower's DP wrappers keep one in ``.strategy``)."""
    layers: list[tuple[str, object]] = []
    obj: object | None = strategy
    prefix = ""
    while obj is not None and len(layers) < 4:
        layers.append((prefix, obj))
        obj = getattr(obj, "strategy", None)
        prefix += "inner/"
    return layers


# -- random numbers --


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's and torch's global generator states, as JSON-able values."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = cast(tuple, np.random.get_state(legacy=True))
    return {
        "python": [version, list(internal), gauss],
        "numpy": [str(name), np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(raw))


def _digest(tensors: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        value = np.ascontiguousarray(tensors[key])
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _diff(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = sorted(set(saved) | set(current))
    diffs = [
        f"{k}: {saved.get(k)!r} there, {current.get(k)!r} here"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    return "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
