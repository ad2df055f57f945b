"""Central pretraining on public text, for private fine-tuning afterwards.

Public data (the Brown corpus) carries no privacy cost, so a model can learn
language there first and then be fine-tuned across clients under DP, where
every step costs epsilon. The pretrained model uses the fine-tuning task's
own vocabulary (tokens the task does not know map to UNK), so the checkpoint
fits that task: a next-character language model for ``sotu``, a next-word one
for ``sentiment`` (whose word vocabulary is itself counted over Brown). The
language model reads the last position (``pooling="last"``); fine-tuned into a
sentence classifier it keeps the embedding and the blocks, while the output
head is re-initialised and the readout becomes the task's own (``"mean"``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedpriv.client.training import train_locally
from fedpriv.shared_models.checkpoint import save_checkpoint
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.evaluation import evaluate_model, resolve_device
from fedpriv.shared_models.registry import ModelConfig, build_model
from fedpriv.simulations.apps import model_config_for
from fedpriv.simulations.datasets import load_dataset
from fedpriv.simulations.text_data import DEFAULT_DATA_DIR, load_brown
from fedpriv.simulations.text_tasks import next_char_windows, window_starts

logger = logging.getLogger(__name__)


DEFAULT_LEARNING_RATES = {"lstm": 1.0, "transformer": 0.3}


@dataclass(frozen=True)
class PretrainResult:
    """Where the checkpoint went and how well it predicts held-out Brown text."""

    path: Path
    model_config: ModelConfig
    train_windows: int
    heldout_accuracy: float
    heldout_loss: float
    seconds: float


def pretrain(
    *,
    model: str,
    task: str,
    out: Path,
    data_dir: Path | None = None,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float | None = None,
    max_windows: int = 20_000,
    seed: int = 0,
    device: str = "auto",
) -> PretrainResult:
    """Train ``model`` to predict the next token of Brown-corpus text.

    Args:
        model: ``lstm`` or ``transformer``.
        task: the text dataset it will be fine-tuned on (``sotu``, ``sentiment``):
            gives the vocabulary, the sequence length and the model's size.
        out: the ``.safetensors`` checkpoint to write (refused if it exists).
        max_windows: evenly spaced training windows taken from the corpus.
        learning_rate: SGD (momentum 0.9); ``None`` takes the model's default
            (``DEFAULT_LEARNING_RATES``: the Transformer diverges at the LSTM's 1.0).
    """
    if learning_rate is None:
        learning_rate = DEFAULT_LEARNING_RATES.get(model, 1.0)
    if not learning_rate > 0:
        raise ConfigError(f"learning rate must be > 0, got {learning_rate}")
    if out.exists():
        raise ConfigError(f"{out} already exists; choose another --out (nothing was overwritten)")
    for name, value in (("epochs", epochs), ("batch size", batch_size), ("windows", max_windows)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    started = time.monotonic()
    folder = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
    data = load_dataset(task, data_dir=folder, seed=seed)
    if not data.is_text or data.vocab is None:
        raise ConfigError(f"pretraining needs a text task (sotu, sentiment), got '{task}'")
    task_config = model_config_for(RunConfig(model=model, dataset=task), data)
    # A language model over the task's vocabulary: one class per token, read at the last position.
    config = ModelConfig.from_dict(
        {**task_config.to_dict(), "num_classes": len(data.vocab), "pooling": "last"}
    )
    ids = data.vocab.encode(load_brown(folder), unknown="unk")
    split = int(len(ids) * 0.95)
    x, y = next_char_windows(ids, window_starts(split, data.seq_len, max_windows), data.seq_len)
    held = window_starts(len(ids) - split, data.seq_len, 2_000) + split
    held = held[held + data.seq_len < len(ids)]
    x_val, y_val = next_char_windows(ids, held, data.seq_len)
    torch.manual_seed(seed)
    net = build_model(config)
    dev = resolve_device(device)
    logger.info("pretraining %s on %d Brown windows (%d epochs)", model, len(x), epochs)
    for epoch in range(epochs):
        result = train_locally(
            net,
            x,
            y,
            epochs=1,
            batch_size=batch_size,
            learning_rate=learning_rate,
            momentum=0.9,
            dp=None,
            device=dev,
            seed=seed + epoch,
        )
        loss, accuracy = evaluate_model(net, x_val, y_val, device=dev)
        logger.info(
            "epoch %d/%d: train loss %.3f, held-out loss %.3f, next-token accuracy %.3f",
            epoch + 1,
            epochs,
            result.mean_loss,
            loss,
            accuracy,
        )
    path = save_checkpoint(
        out,
        result.state_dict,
        config,
        vocab=data.vocab.to_json(),
        extra={"pretrained_on": "brown", "for_task": task, "windows": str(len(x))},
    )
    return PretrainResult(
        path=path,
        model_config=config,
        train_windows=len(x),
        heldout_accuracy=accuracy,
        heldout_loss=loss,
        seconds=time.monotonic() - started,
    )
