"""Model checkpoints: weights plus what is needed to rebuild and trust them.

A checkpoint is one ``.safetensors`` file: the model's ``state_dict`` and, in
the file's metadata, the :class:`ModelConfig` and (for text models) the
tokeniser's vocabulary as JSON, so a client and the server cannot disagree on
either. Run folders save their final model this way; pretraining writes the
same format; ``--init-checkpoint`` reads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.plumbing.atomic import atomic_path
from fedpriv.shared_models.registry import ModelConfig

MODEL_CONFIG_KEY = "model_config"
VOCAB_KEY = "vocab"


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint. ``vocab`` is the tokeniser JSON, or ``None``."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    model_config: ModelConfig
    vocab: str | None
    metadata: dict[str, str]


def save_checkpoint(
    path: Path,
    state_dict: dict[str, torch.Tensor],
    model_config: ModelConfig,
    *,
    vocab: str | None = None,
    extra: dict[str, str] | None = None,
) -> Path:
    """Write atomically (:mod:`~fedpriv.shared_models.plumbing.atomic`): never half-written."""
    metadata = {**(extra or {}), MODEL_CONFIG_KEY: json.dumps(model_config.to_dict())}
    if vocab is not None:
        metadata[VOCAB_KEY] = vocab
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; a missing, corrupt or foreign file is a DataError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"checkpoint {path} not found")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"checkpoint {path} is not a readable safetensors file ({err})") from None
    if MODEL_CONFIG_KEY not in metadata:
        raise DataError(f"checkpoint {path} has no model config; it was not written by fedpriv")
    try:
        config = ModelConfig.from_dict(json.loads(metadata[MODEL_CONFIG_KEY]))
    except (json.JSONDecodeError, ConfigError) as err:
        raise DataError(f"checkpoint {path} has a malformed model config ({err})") from None
    return Checkpoint(path, state_dict, config, metadata.get(VOCAB_KEY), metadata)


def apply_checkpoint(
    model: nn.Module, checkpoint: Checkpoint, config: ModelConfig, *, vocab: str | None = None
) -> list[str]:
    """Load ``checkpoint`` into ``model``, built from ``config``; return keys not loaded.

    The checkpoint must be for the same model family and tokeniser. Every tensor
    whose name and shape match is loaded; the ones that differ (typically the
    output head, when a language model is fine-tuned into a classifier) keep
    their fresh initialisation and are returned.
    """
    ckpt = checkpoint.model_config
    if ckpt.name != config.name:
        raise ConfigError(
            f"checkpoint {checkpoint.path} is for model '{ckpt.name}', "
            f"but this run builds '{config.name}'"
        )
    if checkpoint.vocab != vocab:
        raise ConfigError(
            f"checkpoint {checkpoint.path} was trained with another tokeniser vocabulary "
            "than this run's data; pretrain with the same task's vocabulary"
        )
    own = model.state_dict()
    loadable = {
        k: v for k, v in checkpoint.state_dict.items() if k in own and own[k].shape == v.shape
    }
    skipped = sorted(set(own) - set(loadable))
    if len(loadable) < len(own) / 2:
        raise ConfigError(
            f"checkpoint {checkpoint.path} matches only {len(loadable)} of {len(own)} tensors "
            f"of this '{config.name}' model (width/depth differ?); it does not fit"
        )
    model.load_state_dict({**own, **loadable})
    return skipped


def freeze(model: nn.Module, prefixes: tuple[str, ...]) -> int:
    """Stop training every parameter whose name starts with one of ``prefixes``.

    Returns the number of frozen parameter tensors. A prefix that names no
    parameter is a ConfigError (so a typo does not silently train everything).
    """
    names = [name for name, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name in names):
            raise ConfigError(
                f"--freeze '{prefix}' names no parameter; parameters start with: "
                f"{', '.join(sorted({n.split('.')[0] for n in names}))}"
            )
    frozen = 0
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
            frozen += 1
    return frozen
