"""Text corpora as federated datasets of token ids, for the LSTM and Transformer.

Two tasks:

* ``sotu``: next-character prediction on the State of the Union addresses, with a
  :class:`~fedpriv.shared_models.tokenizer.CharVocab` (case kept; the ``max_vocab_size - 2``
  most frequent characters, the rest UNK), one
  natural client per president (43, unbalanced and non-IID, like LEAF's
  Shakespeare). An example is ``seq_len`` characters; its label is the id of the
  character that follows (``num_classes = len(vocab)``). Each president's text is
  cut at 90%: pool windows come from the first part, central test windows from
  the last 10%, so no test character is ever seen in training. Windows are evenly
  spaced; the president with the most text gives ``max_windows_per_client`` (1000),
  the others a number proportional to their text (at least
  ``min_windows_per_client``, 20), which keeps the natural imbalance (47..1000
  windows a president, ~11k in all) while bounding the CPU cost.
* ``sentiment``: sentence polarity on the VADER ground truth, with a
  :class:`~fedpriv.shared_models.tokenizer.WordVocab`. Label 1 if the mean human rating
  is > 0, else 0; sentences with ``|rating| < neutral_band`` (0.5) are dropped as
  neutral. An example is the sentence's first ``seq_len`` (40) words, right-padded
  with PAD (0); the models average over the non-PAD positions (``pooling="mean"``,
  see :func:`fedpriv.client.local_data.model_config_for_data`). The natural clients are
  the four sources (movie, tweet, nyt, amazon); the pool/test split is stratified
  on (source, label), 80/20, by seed.

  The word vocabulary is the ``SENTIMENT_MAX_VOCAB_SIZE - 2`` most frequent
  lowercase words of the public Brown corpus, not of the clients' sentences: a
  vocabulary counted over private text would itself leak which words the clients
  wrote, outside the DP guarantee, and a real federation must fix its vocabulary
  before it sees any client's data. Words outside it are UNK (about 20% of the
  sentiment tokens, mostly names and rare words).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.tokenizer import PAD_ID, CharVocab, Vocab, WordVocab
from fedpriv.simulations.arrays import ArrayDataset, FederatedData
from fedpriv.simulations.text_data import (
    DEFAULT_DATA_DIR,
    SENTIMENT_SOURCES,
    load_brown,
    load_sentiment,
    load_sotu,
)

logger = logging.getLogger(__name__)

#: What a natural client is, per text dataset (used in error messages).
NATURAL_CLIENT_KIND: dict[str, str] = {"sotu": "presidents", "sentiment": "sources"}
MAX_VOCAB_SIZE = 100  # PAD and UNK included
SOTU_SEQ_LEN = 40
SOTU_MAX_WINDOWS_PER_CLIENT = 1000
SOTU_MIN_WINDOWS_PER_CLIENT = 20
SOTU_MAX_TEST_WINDOWS_PER_CLIENT = 100
SOTU_TEST_FRACTION = 0.1
SENTIMENT_SEQ_LEN = 40  # words; 95% of the sentences have at most 38 tokens
SENTIMENT_MAX_VOCAB_SIZE = 4000  # PAD and UNK included
SENTIMENT_NEUTRAL_BAND = 0.5
SENTIMENT_TEST_FRACTION = 0.2


def load_text_task(name: str, *, data_dir: Path | None = None, seed: int = 0) -> FederatedData:
    """Build the ``sotu`` or ``sentiment`` task, with default settings, from the cache.

    Args:
        name: ``"sotu"`` or ``"sentiment"``.
        data_dir: the corpora cache; defaults to ``text_data.DEFAULT_DATA_DIR``.
        seed: seed of the sentiment pool/test split; sotu is deterministic and ignores it.

    Raises:
        ConfigError: ``name`` is not a text task.
        DataError: the corpus is not fetched, or damaged.
    """
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    if name == "sotu":
        return sotu_task(load_sotu(folder))
    if name == "sentiment":
        return sentiment_task(load_sentiment(folder), seed=seed, vocab=sentiment_vocab(folder))
    raise ConfigError(f"unknown text task {name!r}; choose one of: sotu, sentiment")


def sentiment_vocab(
    data_dir: Path | None = None, *, max_size: int = SENTIMENT_MAX_VOCAB_SIZE
) -> WordVocab:
    """The sentiment task's word vocabulary, counted over the public Brown corpus.

    Raises:
        DataError: the Brown corpus is not fetched, or damaged.
    """
    folder = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    return WordVocab.build(load_brown(folder).splitlines(), max_size=max_size)


def window_starts(length: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Start offsets of at most ``max_windows`` evenly spaced windows over ``length`` ids.

    A window needs ``seq_len + 1`` ids (inputs and the next-character label), so
    starts lie in ``[0, length - seq_len - 1]``; the first and the last possible
    starts are always included when there are two or more.

    Returns:
        Sorted, distinct int64 offsets; empty when ``length <= seq_len``.
    """
    last = length - seq_len - 1
    if last < 0 or max_windows < 1:
        return np.zeros(0, dtype=np.int64)
    count = min(max_windows, last + 1)
    return np.unique(np.linspace(0, last, num=count).round().astype(np.int64))


def next_char_windows(
    ids: np.ndarray, starts: np.ndarray, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``ids[s : s + seq_len]`` and labels ``ids[s + seq_len]`` for each start ``s``."""
    offsets = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len, dtype=np.int64)
    return ids[offsets].astype(np.int64), ids[np.asarray(starts) + seq_len].astype(np.int64)


def sotu_task(
    texts: Mapping[str, str],
    *,
    seq_len: int = SOTU_SEQ_LEN,
    max_windows_per_client: int = SOTU_MAX_WINDOWS_PER_CLIENT,
    min_windows_per_client: int = SOTU_MIN_WINDOWS_PER_CLIENT,
    max_test_windows_per_client: int = SOTU_MAX_TEST_WINDOWS_PER_CLIENT,
    test_fraction: float = SOTU_TEST_FRACTION,
    max_vocab_size: int = MAX_VOCAB_SIZE,
) -> FederatedData:
    """Next-character prediction with one natural client per author.

    Args:
        texts: author -> text (e.g. :func:`fedpriv.simulations.text_data.load_sotu`), in
            client-id order.
        seq_len: characters per example (>= 1).
        max_windows_per_client: pool windows of the author with the most text (>= 1);
            the others get a share proportional to their text length.
        min_windows_per_client: fewest pool windows of an author (>= 2), text allowing.
        max_test_windows_per_client: most test windows per author (>= 1).
        test_fraction: share of each author's text, at its end, kept for the test set.
        max_vocab_size: vocabulary cap, PAD and UNK included (>= 3).

    Raises:
        ConfigError: a setting out of range.
        DataError: no text, or an author whose text is too short for one pool and
            one test window.
    """
    _check_positive(seq_len=seq_len, max_windows_per_client=max_windows_per_client)
    _check_positive(max_test_windows_per_client=max_test_windows_per_client)
    if not 2 <= min_windows_per_client <= max_windows_per_client:
        raise ConfigError(
            f"min_windows_per_client must be in [2, max_windows_per_client="
            f"{max_windows_per_client}], got {min_windows_per_client}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not texts:
        raise DataError("sotu needs at least one author's text, got none")
    vocab = CharVocab.build(texts.values(), max_size=max_vocab_size)
    cuts = [int(round(len(text) * (1.0 - test_fraction))) for text in texts.values()]
    longest = max(cuts)
    pool_x: list[np.ndarray] = []
    pool_y: list[np.ndarray] = []
    test_x: list[np.ndarray] = []
    test_y: list[np.ndarray] = []
    groups: list[np.ndarray] = []
    for group, ((author, text), cut) in enumerate(zip(texts.items(), cuts, strict=True)):
        ids = vocab.encode(text, unknown="unk")
        train_ids, test_ids = ids[:cut], ids[cut:]
        share = round(max_windows_per_client * cut / longest) if longest else 0
        num_windows = max(min_windows_per_client, share)
        train_starts = window_starts(len(train_ids), seq_len, num_windows)
        test_starts = window_starts(len(test_ids), seq_len, max_test_windows_per_client)
        if len(train_starts) < 2 or len(test_starts) < 1:
            raise DataError(
                f"sotu author {author!r} has {len(text)} characters, too few for "
                f"{seq_len}-character windows in both pool and test; use a smaller seq_len"
            )
        for starts, part, xs, ys in (
            (train_starts, train_ids, pool_x, pool_y),
            (test_starts, test_ids, test_x, test_y),
        ):
            x, y = next_char_windows(part, starts, seq_len)
            xs.append(x)
            ys.append(y)
        groups.append(np.full(len(train_starts), group, dtype=np.int64))
    num_classes = len(vocab)
    data = FederatedData(
        name="sotu",
        pool=ArrayDataset(np.concatenate(pool_x), np.concatenate(pool_y), num_classes),
        test=ArrayDataset(np.concatenate(test_x), np.concatenate(test_y), num_classes),
        image_size=0,
        in_channels=0,
        vocab=vocab,
        groups=np.concatenate(groups),
        group_names=tuple(texts),
        seq_len=seq_len,
    )
    logger.debug(
        "sotu: %d authors, %d pool and %d test windows of %d chars, vocab %d",
        len(texts),
        len(data.pool),
        len(data.test),
        seq_len,
        num_classes,
    )
    return data


def sentiment_task(
    records: Sequence[tuple[str, float, str]],
    *,
    seq_len: int = SENTIMENT_SEQ_LEN,
    seed: int = 0,
    neutral_band: float = SENTIMENT_NEUTRAL_BAND,
    test_fraction: float = SENTIMENT_TEST_FRACTION,
    vocab: WordVocab | None = None,
    max_vocab_size: int = SENTIMENT_MAX_VOCAB_SIZE,
) -> FederatedData:
    """Binary sentence polarity, with the sentence's source as its natural client.

    Args:
        records: ``(text, mean_rating, source)`` (e.g. :func:`load_sentiment`),
            source one of ``SENTIMENT_SOURCES``.
        seq_len: words kept per sentence (>= 1): the first ``seq_len`` tokens of
            :func:`~fedpriv.shared_models.tokenizer.tokenize_words`, right-padded with PAD.
        seed: seed of the stratified pool/test split (>= 0).
        neutral_band: sentences with ``|rating| < neutral_band`` are dropped (>= 0;
            0 keeps all, and a rating of exactly 0 is then negative).
        test_fraction: share of sentences in the test set, in (0, 1).
        vocab: the word vocabulary (:func:`load_text_task` passes
            :func:`sentiment_vocab`, counted over public text); None builds one
            from the pool sentences, capped at ``max_vocab_size``.
        max_vocab_size: cap of a vocabulary built here, PAD and UNK included (>= 3).

    Raises:
        ConfigError: a setting out of range.
        DataError: an unknown source, or too few sentences left to split.
    """
    from sklearn.model_selection import train_test_split

    _check_positive(seq_len=seq_len)
    if seed < 0 or neutral_band < 0 or not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"need seed >= 0, neutral_band >= 0 and test_fraction in (0, 1), got "
            f"{seed}, {neutral_band}, {test_fraction}"
        )
    kept = [r for r in records if abs(r[1]) >= neutral_band]
    unknown = sorted({r[2] for r in kept} - set(SENTIMENT_SOURCES))
    if unknown:
        raise DataError(
            f"sentiment source {unknown[0]!r} is not one of {', '.join(SENTIMENT_SOURCES)}"
        )
    texts = [r[0] for r in kept]
    labels = np.array([r[1] > 0 for r in kept], dtype=np.int64)
    groups = np.array([SENTIMENT_SOURCES.index(r[2]) for r in kept], dtype=np.int64)
    if len(kept) < 4:
        raise DataError(
            f"sentiment has {len(kept)} sentences outside the neutral band "
            f"|rating| < {neutral_band}; too few to split, lower neutral_band"
        )
    # Stratify on (source, label); tiny corpora (tests) fall back to label, then none.
    stratify: np.ndarray | None = None
    for candidate in (groups * 2 + labels, labels):
        if np.unique(candidate, return_counts=True)[1].min() >= 2:
            stratify = candidate
            break
    pool_idx, test_idx = train_test_split(
        np.arange(len(kept)), test_size=test_fraction, stratify=stratify, random_state=seed
    )
    pool_idx, test_idx = np.sort(pool_idx), np.sort(test_idx)
    if vocab is None:
        vocab = WordVocab.build((texts[i] for i in pool_idx), max_size=max_vocab_size)
    x = np.stack([encode_padded(vocab, t, seq_len) for t in texts])
    return FederatedData(
        name="sentiment",
        pool=ArrayDataset(x[pool_idx], labels[pool_idx], 2),
        test=ArrayDataset(x[test_idx], labels[test_idx], 2),
        image_size=0,
        in_channels=0,
        vocab=vocab,
        groups=groups[pool_idx],
        group_names=SENTIMENT_SOURCES,
        seq_len=seq_len,
    )


def encode_padded(vocab: Vocab, text: str, seq_len: int) -> np.ndarray:
    """Ids of the first ``seq_len`` tokens of ``text`` (unknown -> UNK), right-padded with PAD."""
    ids = vocab.encode(text, unknown="unk")[:seq_len]
    out = np.full(seq_len, PAD_ID, dtype=np.int64)
    out[: len(ids)] = ids
    return out


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
