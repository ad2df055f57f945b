"""Checkpoints: round trip, refusal of corrupt or foreign files, freezing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpriv.client.training import DPStep, train_locally
from fedpriv.shared_models.checkpoint import (
    apply_checkpoint,
    freeze,
    load_checkpoint,
    save_checkpoint,
)
from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.registry import ModelConfig, build_model

LM = ModelConfig(name="lstm", num_classes=30, vocab_size=30, seq_len=12, width=16)
CLASSIFIER = ModelConfig(name="lstm", num_classes=2, vocab_size=30, seq_len=12, width=16)
VOCAB = '{"chars": "abc"}'


def _saved(tmp_path, config=LM, vocab=VOCAB):
    torch.manual_seed(1)
    model = build_model(config)
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model.state_dict(), config, vocab=vocab)
    return model, path


def test_round_trip_keeps_weights_config_and_vocab(tmp_path):
    model, path = _saved(tmp_path)
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == LM and ckpt.vocab == VOCAB
    fresh = build_model(LM)
    assert apply_checkpoint(fresh, ckpt, LM, vocab=VOCAB) == []
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_language_model_checkpoint_fine_tunes_into_a_classifier(tmp_path):
    model, path = _saved(tmp_path)
    classifier = build_model(CLASSIFIER)
    skipped = apply_checkpoint(classifier, load_checkpoint(path), CLASSIFIER, vocab=VOCAB)
    assert skipped == ["head.bias", "head.weight"]  # only the output head is new
    assert torch.equal(classifier.state_dict()["embed.weight"], model.state_dict()["embed.weight"])


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"\x08\x00\x00\x00\x00\x00\x00\x00{}"])
def test_corrupt_checkpoint_is_refused(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.safetensors"):
        load_checkpoint(path)


def test_checkpoint_for_another_model_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    transformer = ModelConfig(name="transformer", num_classes=30, vocab_size=30, seq_len=12)
    with pytest.raises(ConfigError, match="is for model 'lstm', but this run builds 'transformer'"):
        apply_checkpoint(build_model(transformer), load_checkpoint(path), transformer, vocab=VOCAB)
    wider = ModelConfig(name="lstm", num_classes=30, vocab_size=30, seq_len=12, width=32)
    with pytest.raises(ConfigError, match="does not fit"):
        apply_checkpoint(build_model(wider), load_checkpoint(path), wider, vocab=VOCAB)


def test_checkpoint_with_another_vocabulary_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ConfigError, match="another tokeniser vocabulary"):
        apply_checkpoint(build_model(LM), load_checkpoint(path), LM, vocab='{"chars": "xyz"}')


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_frozen_parameters_do_not_change_under_dp_training():
    torch.manual_seed(0)
    model = build_model(CLASSIFIER)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert freeze(model, ("embed", "lstm")) == 9
    rng = np.random.default_rng(0)
    result = train_locally(
        model,
        rng.integers(0, 30, (40, 12)),
        rng.integers(0, 2, 40),
        epochs=2,
        batch_size=8,
        learning_rate=0.5,
        dp=DPStep(noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp"),
        device=torch.device("cpu"),
        seed=0,
    )
    after = result.state_dict
    for key in before:
        if key.startswith(("embed", "lstm")):
            assert torch.equal(after[key], before[key]), key
        else:
            assert not torch.equal(after[key], before[key]), key


def test_freezing_an_unknown_prefix_is_refused():
    with pytest.raises(ConfigError, match="names no parameter; parameters start with: embed"):
        freeze(build_model(LM), ("encoder",))
