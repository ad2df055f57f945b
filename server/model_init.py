"""The global model before round 1: fresh weights, or a checkpoint to fine-tune."""

from __future__ import annotations

import hashlib
from pathlib import Path

from torch import nn

from fedpriv.server.central_data import CentralData
from fedpriv.shared_models.checkpoint import apply_checkpoint, freeze, load_checkpoint
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.registry import build_model


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
