"""The model registry: one validated :class:`ModelConfig`, one :func:`build_model`.

Server and clients must build bit-for-bit the same architecture, or the weights
they exchange will not fit. Both sides therefore describe the model with a
:class:`ModelConfig` (which travels as a plain ``dict`` through
:meth:`ModelConfig.to_dict` / :meth:`ModelConfig.from_dict`) and build it here,
never by calling a model class directly.

Example:
    >>> config = ModelConfig(name="cnn", num_classes=10)
    >>> model = build_model(config)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedpriv.shared_models.errors import ConfigError
from fedpriv.shared_models.pooling import POOLINGS

if TYPE_CHECKING:  # the models (and torch) are imported when one is built
    from torch import nn

__all__ = ["MODEL_NAMES", "POOLINGS", "ModelConfig", "build_model"]

logger = logging.getLogger(__name__)

#: Every model :func:`build_model` can build, in the order shown to users.
MODEL_NAMES: tuple[str, ...] = ("cnn", "lstm", "transformer")

#: Models that read (B, T) token ids rather than images.
_SEQUENCE_MODELS = frozenset({"lstm", "transformer"})

#: ModelConfig fields that are strings; every other field is an integer.
_STRING_FIELDS = frozenset({"name", "pooling"})

#: Smallest image side the CNN accepts, in pixels.
_MIN_IMAGE_SIZE = 4


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build one model; validated on construction.

    Fields a model does not use are still range-checked but otherwise ignored
    (``vocab_size`` for the CNN, ``heads`` for the LSTM, ...).

    Attributes:
        name: Which model: one of :data:`MODEL_NAMES`.
        num_classes: Number of output logits (>= 2); for next-character
            prediction, the vocabulary size.
        in_channels: CNN only: colour channels of the input images (>= 1).
        image_size: CNN only: side of the square input images, in pixels
            (>= 4; 8 for scikit-learn digits, 28 for Fashion-MNIST).
        vocab_size: LSTM and Transformer: token ids lie in [0, vocab_size)
            (>= 2 for those models).
        seq_len: LSTM and Transformer: longest input, in tokens (>= 1 for
            those models); sets the Transformer's positional table.
        width: CNN channels / LSTM hidden size / Transformer model dimension (>= 2).
        depth: Conv blocks / LSTM layers / Transformer blocks (>= 1).
        heads: Transformer only: attention heads (>= 1, must divide ``width``).
        pooling: LSTM and Transformer: how one output is read from the sequence,
            one of :data:`~fedpriv.shared_models.pooling.POOLINGS`: ``"last"``, the
            last position (next-token prediction), or ``"mean"``, the mean over
            non-PAD positions (classification of right-padded sentences).

    Raises:
        ConfigError: On construction, if any field is of the wrong type or out
            of range; the message names the field, the rule and the value seen.
    """

    name: str
    num_classes: int
    in_channels: int = 1
    image_size: int = 8
    vocab_size: int = 0
    seq_len: int = 0
    width: int = 32
    depth: int = 2
    heads: int = 4
    pooling: str = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigError(f"model name must be a string, got {type(self.name).__name__}")
        if self.name not in MODEL_NAMES:
            raise ConfigError(
                f"unknown model {self.name!r}; choose one of: {', '.join(MODEL_NAMES)}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _STRING_FIELDS:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(
                    f"{field.name} must be an integer, got {type(value).__name__} {value!r}"
                )
        if self.pooling not in POOLINGS:
            raise ConfigError(
                f"pooling must be one of {', '.join(map(repr, POOLINGS))}, got {self.pooling!r}"
            )
        _check_at_least("num_classes", self.num_classes, 2)
        _check_at_least("in_channels", self.in_channels, 1)
        _check_at_least("image_size", self.image_size, _MIN_IMAGE_SIZE)
        _check_at_least("vocab_size", self.vocab_size, 0)
        _check_at_least("seq_len", self.seq_len, 0)
        _check_at_least("width", self.width, 2)
        _check_at_least("depth", self.depth, 1)
        _check_at_least("heads", self.heads, 1)
        if self.name in _SEQUENCE_MODELS:
            _check_at_least("vocab_size", self.vocab_size, 2, model=self.name)
            _check_at_least("seq_len", self.seq_len, 1, model=self.name)
        if self.name == "transformer" and self.width % self.heads != 0:
            raise ConfigError(
                f"width must be divisible by heads "
                f"({self.width} % {self.heads} != 0); pick a width that is a multiple of heads"
            )

    def to_dict(self) -> dict[str, int | str]:
        """Return every field as a plain, JSON- and Flower-config-friendly ``dict``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> ModelConfig:
        """Build a config from :meth:`to_dict` output (or any mapping of field names).

        Args:
            data: Field name -> value. ``name`` and ``num_classes`` are
                required; the other fields fall back to their defaults.

        Returns:
            The validated config; ``ModelConfig.from_dict(c.to_dict()) == c``.

        Raises:
            ConfigError: If a key is unknown, a required key is missing, or a
                value is invalid.
        """
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown model setting(s): {', '.join(map(repr, unknown))}; "
                f"expected some of: {', '.join(known)}"
            )
        missing = [key for key in ("name", "num_classes") if key not in data]
        if missing:
            raise ConfigError(
                f"model settings are missing required key(s): {', '.join(map(repr, missing))}"
            )
        kwargs: dict[str, Any] = dict(data)
        return cls(**kwargs)


def build_model(config: ModelConfig) -> nn.Module:
    """Build a freshly initialised model, in training mode, on the CPU.

    Every model maps a batch to float logits shaped (B, num_classes): the CNN
    takes float images (B, in_channels, image_size, image_size); the LSTM and
    Transformer take int64 token ids (B, T), with T <= seq_len for the
    Transformer. All are Opacus-compatible (``ModuleValidator.validate`` finds
    no errors), so they can be handed to ``PrivacyEngine.make_private`` as is.

    Args:
        config: A validated model description.

    Returns:
        The model; seed ``torch`` beforehand for reproducible initial weights.
    """
    model = _BUILDERS[config.name](config)
    logger.debug(
        "built model %s with %d parameters",
        config.name,
        sum(p.numel() for p in model.parameters()),
    )
    return model


def _check_at_least(field: str, value: int, minimum: int, *, model: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value >= minimum``."""
    if value < minimum:
        where = f" for model {model!r}" if model is not None else ""
        raise ConfigError(f"{field} must be >= {minimum}{where}, got {value}")


def _build_cnn(config: ModelConfig) -> nn.Module:
    from fedpriv.shared_models.cnn import CNN

    return CNN(
        in_channels=config.in_channels,
        num_classes=config.num_classes,
        width=config.width,
        depth=config.depth,
    )


def _build_lstm(config: ModelConfig) -> nn.Module:
    from fedpriv.shared_models.lstm import LSTMClassifier

    return LSTMClassifier(
        vocab_size=config.vocab_size,
        num_classes=config.num_classes,
        width=config.width,
        depth=config.depth,
        pooling=config.pooling,
    )


def _build_transformer(config: ModelConfig) -> nn.Module:
    from fedpriv.shared_models.transformer import TransformerClassifier

    return TransformerClassifier(
        vocab_size=config.vocab_size,
        seq_len=config.seq_len,
        num_classes=config.num_classes,
        width=config.width,
        depth=config.depth,
        heads=config.heads,
        pooling=config.pooling,
    )


_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "cnn": _build_cnn,
    "lstm": _build_lstm,
    "transformer": _build_transformer,
}
