"""Tests for shared_models: the config, the registry and the three DP-ready models.

Every model (and each readout of the sequence models, ``pooling="last"`` and
``"mean"``) is checked the way Opacus checks its own layers: the module
validator finds nothing to fix, per-sample gradients match a batch-of-one loop
of plain autograd, and one real DP-SGD step clips, noises, updates and is
accounted for.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from fedpriv.shared_models import (
    MODEL_NAMES,
    ConfigError,
    FedprivError,
    ModelConfig,
    build_model,
)
from fedpriv.shared_models.tokenizer import PAD_ID

# Two known, harmless warnings, silenced by exact message only: torch notes that
# Opacus's backward hooks fire although the inputs need no gradient, and Opacus
# reminds that tests run without its cryptographically secure noise generator.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
]

VOCAB = 20
SEQ_LEN = 12
WIDTH = 16
NUM_CLASSES = 10

CONFIGS = {
    "cnn": ModelConfig(name="cnn", num_classes=NUM_CLASSES, width=WIDTH),
    "lstm": ModelConfig(
        name="lstm", num_classes=VOCAB, vocab_size=VOCAB, seq_len=SEQ_LEN, width=WIDTH
    ),
    "transformer": ModelConfig(
        name="transformer",
        num_classes=VOCAB,
        vocab_size=VOCAB,
        seq_len=SEQ_LEN,
        width=WIDTH,
        heads=4,
    ),
}
#: Sentence classifiers: right-padded input, mean over the non-PAD positions.
MEAN_POOLED = {
    f"{name}-mean": dataclasses.replace(CONFIGS[name], num_classes=2, pooling="mean")
    for name in ("lstm", "transformer")
}
#: Every model and readout that must work under Opacus.
VARIANTS = {**CONFIGS, **MEAN_POOLED}


def _batch(config: ModelConfig, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs and labels of the right shape and dtype for ``config``.

    Mean-pooled sequence models get right-padded sentences of lengths
    seq_len, seq_len // 2, 1, 0 (all PAD), seq_len, ...; token ids are never PAD.
    """
    if config.name == "cnn":
        inputs = torch.randn(size, config.in_channels, config.image_size, config.image_size)
    else:
        inputs = torch.randint(PAD_ID + 1, config.vocab_size, (size, config.seq_len))
        if config.pooling == "mean":
            lengths = [config.seq_len, config.seq_len // 2, 1, 0]
            for row in range(size):
                inputs[row, lengths[row % len(lengths)] :] = PAD_ID
    return inputs, torch.randint(0, config.num_classes, (size,))


# --- ModelConfig ---------------------------------------------------------------------------


def test_model_names_match_the_registry() -> None:
    assert MODEL_NAMES == ("cnn", "lstm", "transformer")
    assert set(CONFIGS) == set(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_round_trips_through_a_dict(name: str) -> None:
    config = dataclasses.replace(CONFIGS[name], depth=3)
    as_dict = config.to_dict()
    assert all(isinstance(value, int | str) for value in as_dict.values())
    assert ModelConfig.from_dict(as_dict) == config


def test_from_dict_fills_defaults() -> None:
    assert ModelConfig.from_dict({"name": "cnn", "num_classes": 10}) == ModelConfig("cnn", 10)
    # a config saved before pooling existed reads the last position, as those models did
    old = {k: v for k, v in CONFIGS["transformer"].to_dict().items() if k != "pooling"}
    assert ModelConfig.from_dict(old).pooling == "last"


def test_pooling_is_validated_and_travels() -> None:
    config = MEAN_POOLED["transformer-mean"]
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError) as excinfo:
        dataclasses.replace(config, pooling="max")
    assert str(excinfo.value) == "pooling must be one of 'last', 'mean', got 'max'"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"name": "foo"}, "unknown model 'foo'; choose one of: cnn, lstm, transformer"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"width": 1}, "width must be >= 2, got 1"),
        ({"depth": 0}, "depth must be >= 1, got 0"),
        ({"image_size": 2}, "image_size must be >= 4, got 2"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"vocab_size": -1}, "vocab_size must be >= 0, got -1"),
        ({"width": "32"}, "width must be an integer, got str '32'"),
        ({"depth": True}, "depth must be an integer, got bool True"),
        ({"num_classes": 2.0}, "num_classes must be an integer, got float 2.0"),
        ({"name": 3}, "model name must be a string, got int"),
    ],
)
def test_bad_cnn_settings_raise_config_error(overrides: dict[str, object], message: str) -> None:
    settings = {"name": "cnn", "num_classes": 10, **overrides}
    with pytest.raises(ConfigError) as excinfo:
        ModelConfig(**settings)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_sequence_models_need_a_vocabulary_and_a_length(name: str) -> None:
    with pytest.raises(ConfigError, match=f"vocab_size must be >= 2 for model '{name}', got 0"):
        ModelConfig(name=name, num_classes=5, seq_len=8)
    with pytest.raises(ConfigError, match=f"seq_len must be >= 1 for model '{name}', got 0"):
        ModelConfig(name=name, num_classes=5, vocab_size=5)


def test_transformer_width_must_be_divisible_by_heads() -> None:
    with pytest.raises(ConfigError, match=r"width must be divisible by heads \(32 % 3 != 0\)"):
        ModelConfig(name="transformer", num_classes=5, vocab_size=5, seq_len=8, heads=3)
    # The other models ignore heads.
    ModelConfig(name="lstm", num_classes=5, vocab_size=5, seq_len=8, heads=3)


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown model setting\(s\): 'hidden', 'layers'"):
        ModelConfig.from_dict({"name": "cnn", "num_classes": 10, "layers": 2, "hidden": 3})
    with pytest.raises(ConfigError, match=r"missing required key\(s\): 'num_classes'"):
        ModelConfig.from_dict({"name": "cnn"})


def test_config_errors_are_fedpriv_value_errors_and_configs_are_frozen() -> None:
    assert issubclass(ConfigError, FedprivError)
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(dataclasses.FrozenInstanceError):
        CONFIGS["cnn"].width = 64  # type: ignore[misc]


# --- Shapes and state dicts ----------------------------------------------------------------


@pytest.mark.parametrize("image_size", [8, 28])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cnn_output_shape(image_size: int, in_channels: int) -> None:
    config = ModelConfig(
        name="cnn", num_classes=NUM_CLASSES, in_channels=in_channels, image_size=image_size
    )
    inputs, _ = _batch(config, 5)
    assert build_model(config)(inputs).shape == (5, NUM_CLASSES)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
@pytest.mark.parametrize("length", [1, SEQ_LEN])
def test_sequence_model_output_shape(name: str, length: int) -> None:
    model = build_model(CONFIGS[name])
    tokens = torch.randint(0, VOCAB, (3, length))
    assert model(tokens).shape == (3, VOCAB)


def test_transformer_rejects_inputs_longer_than_seq_len() -> None:
    model = build_model(CONFIGS["transformer"])
    with pytest.raises(ValueError, match="seq_len=12"):
        model(torch.randint(0, VOCAB, (2, SEQ_LEN + 1)))


def test_default_width_models_stay_small() -> None:
    config = ModelConfig(name="cnn", num_classes=10)
    assert 5_000 <= sum(p.numel() for p in build_model(config).parameters()) <= 30_000


@pytest.mark.parametrize("name", VARIANTS)
def test_state_dict_has_one_entry_per_parameter_and_loads_back(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(VARIANTS[name])
    state = model.state_dict()
    # DPLSTM alone would list each weight twice; the weights that travel must not.
    assert list(state) == [key for key, _ in model.named_parameters()]
    other = build_model(VARIANTS[name])
    other.load_state_dict(state)
    inputs, _ = _batch(VARIANTS[name], 2)
    assert torch.equal(model(inputs), other(inputs))


def test_transformer_attention_matches_torch_multihead_attention() -> None:
    """Same weights, same answer as torch's reference, padding mask included.
    (Opacus 1.6's DPMultiheadAttention with batch_first=True fails this.)"""
    from fedpriv.shared_models.transformer import SelfAttention

    torch.manual_seed(0)
    ours = SelfAttention(WIDTH, heads=4)
    reference = torch.nn.MultiheadAttention(WIDTH, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.qkv.weight)
        reference.in_proj_bias.copy_(ours.qkv.bias)
        reference.out_proj.weight.copy_(ours.proj.weight)
        reference.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(3, 7, WIDTH)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 4:] = True
    for mask in (None, pad):
        expected, _ = reference(x, x, x, key_padding_mask=mask, need_weights=False)
        assert torch.allclose(ours(x, mask), expected, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "transformer", *MEAN_POOLED])
def test_sequence_models_accept_an_empty_batch(name: str) -> None:
    # Poisson sampling can draw an empty batch; DP-SGD still takes the step.
    config = VARIANTS[name]
    assert build_model(config)(torch.zeros(0, SEQ_LEN, dtype=torch.int64)).shape == (
        0,
        config.num_classes,
    )


# --- Pooling -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MEAN_POOLED)
def test_mean_pooling_ignores_padding(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(MEAN_POOLED[name]).eval()
    inputs, _ = _batch(MEAN_POOLED[name], 4)
    with torch.no_grad():
        batched = model(inputs)
        for row, tokens in enumerate(inputs):
            length = int((tokens != PAD_ID).sum())
            if length == 0:
                continue
            # the same sentence alone, without any padding, gives the same logits
            alone = model(tokens[:length].unsqueeze(0))
            assert torch.allclose(batched[row], alone[0], atol=1e-5), (row, length)
        # so does more padding (here: a padded copy of the half-length sentence)
        assert torch.allclose(model(inputs[1:2, : SEQ_LEN - 2])[0], batched[1], atol=1e-5)
        assert torch.isfinite(batched[3]).all()  # the all-PAD row: zeros pooled, not NaN


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_last_pooling_reads_the_last_position_padding_included(name: str) -> None:
    """The contrast that makes the test above meaningful: without the mean over
    non-PAD positions, trailing padding does change the output."""
    torch.manual_seed(0)
    model = build_model(CONFIGS[name]).eval()
    tokens = torch.randint(1, VOCAB, (1, SEQ_LEN // 2))
    padded = torch.cat([tokens, torch.full((1, SEQ_LEN // 2), PAD_ID)], dim=1)
    with torch.no_grad():
        assert not torch.allclose(model(tokens), model(padded), atol=1e-4)


@pytest.mark.parametrize("name", MEAN_POOLED)
def test_mean_pooling_reads_every_token(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(MEAN_POOLED[name]).eval()
    tokens = torch.randint(1, VOCAB, (1, SEQ_LEN))
    changed = tokens.clone()
    changed[0, 0] = 1 + (int(tokens[0, 0]) % (VOCAB - 1))  # another real token, not PAD
    with torch.no_grad():
        assert not torch.allclose(model(tokens), model(changed), atol=1e-6)


# --- Opacus compatibility ------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
def test_module_validator_finds_nothing_to_fix(name: str) -> None:
    assert ModuleValidator.validate(build_model(VARIANTS[name]), strict=True) == []


@pytest.mark.parametrize("name", VARIANTS)
def test_per_sample_gradients_match_a_batch_of_one_loop(name: str) -> None:
    torch.manual_seed(0)
    config = VARIANTS[name]
    model = build_model(config)
    reference = copy.deepcopy(model)
    inputs, labels = _batch(config, 4)

    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(inputs), labels, reduction="sum").backward()

    names = [key for key, _ in reference.named_parameters()]
    params = list(reference.parameters())
    for i in range(len(inputs)):
        loss = F.cross_entropy(reference(inputs[i : i + 1]), labels[i : i + 1], reduction="sum")
        expected = torch.autograd.grad(loss, params)
        for key, param, grad in zip(names, model.parameters(), expected, strict=True):
            grad_sample = getattr(param, "grad_sample", None)  # set by Opacus's hooks
            assert grad_sample is not None, key
            assert grad_sample.shape == (len(inputs), *param.shape), key
            assert torch.allclose(grad_sample[i], grad, atol=1e-5, rtol=1e-4), (key, i)


@pytest.mark.parametrize("name", VARIANTS)
def test_one_dp_sgd_step_clips_noises_updates_and_is_accounted(name: str) -> None:
    torch.manual_seed(0)
    config = VARIANTS[name]
    inputs, labels = _batch(config, 32)
    model = build_model(config)
    learning_rate, max_grad_norm = 0.1, 1.0
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=learning_rate),
        data_loader=DataLoader(TensorDataset(inputs, labels), batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=max_grad_norm,
        poisson_sampling=True,
    )
    batch_inputs, batch_labels = next(iter(loader))
    assert len(batch_inputs) > 0  # Poisson sampling; fixed by the seed above.
    before = [p.detach().clone() for p in model.parameters()]

    optimizer.zero_grad()
    loss = F.cross_entropy(model(batch_inputs), batch_labels)
    loss.backward()
    optimizer.step()

    assert torch.isfinite(loss)
    # Each clipped per-sample gradient has norm <= C, so their sum has norm <= C * batch.
    summed = torch.cat([p.summed_grad.flatten() for p in model.parameters()])
    assert summed.norm() <= max_grad_norm * len(batch_inputs) * (1 + 1e-5)
    for old, new in zip(before, model.parameters(), strict=True):
        assert new.grad is not None and torch.isfinite(new.grad).all()
        assert not torch.equal(new.detach(), old)
        assert torch.allclose(new.detach(), old - learning_rate * new.grad, atol=1e-6)
    assert engine.accountant.history == [(1.0, 8 / 32, 1)]
