"""Vocabularies: text <-> int64 token ids for the LSTM and Transformer.

Two kinds, with the same interface (``build``, ``encode``, ``decode``, ``len``,
``to_json``/``from_json``):

* :class:`CharVocab`: one id per character (next-character prediction, ``sotu``).
* :class:`WordVocab`: one id per lowercase word or punctuation mark, as split by
  :func:`tokenize_words` (sentence classification, ``sentiment``).

Server and clients must map text to the same ids, or a checkpoint means
nothing: the vocabulary therefore travels as JSON (``to_json``; read either kind
back with :func:`vocab_from_json`), e.g. in checkpoint metadata and data folders.

Ids: ``0`` is padding (:data:`PAD_ID`), ``1`` stands for any token outside
the vocabulary (:data:`UNK_ID`), and ``2..len(vocab)-1`` are the tokens, most
frequent first.

Example:
    >>> vocab = CharVocab.build(["hello world"])
    >>> vocab.decode(vocab.encode("hello"))
    'hello'
    >>> words = WordVocab.build(["Hello, world!"])
    >>> words.decode(words.encode("hello world, hello!"))
    'hello world , hello !'
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

from fedpriv.shared_models.errors import DataError

__all__ = [
    "PAD_ID",
    "UNK_CHAR",
    "UNK_ID",
    "UNK_WORD",
    "CharVocab",
    "Vocab",
    "WordVocab",
    "tokenize_words",
    "vocab_from_json",
]

PAD_ID = 0
UNK_ID = 1
#: How :meth:`CharVocab.decode` shows an unknown character (U+FFFD REPLACEMENT CHARACTER).
UNK_CHAR = "\ufffd"
#: How :meth:`WordVocab.decode` shows an unknown word (never a token itself).
UNK_WORD = "<unk>"
_NUM_SPECIAL = 2
_JSON_KIND = "char-vocab"
_JSON_VERSION = 1
_WORD_JSON_KIND = "word-vocab"
_WORD_JSON_VERSION = 1
#: A word (letters/digits, with inner apostrophes: "don't") or one punctuation mark.
_WORD_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")


@dataclass(frozen=True)
class CharVocab:
    """An ordered set of characters; character ``chars[i]`` has id ``i + 2``.

    Attributes:
        chars: distinct single characters, in id order (most frequent first when
            made by :meth:`build`).
    """

    chars: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_entries(
            self.chars,
            field="chars",
            unit="character",
            is_entry=lambda c: len(c) == 1,
            rule="one character",
            builder="CharVocab",
        )

    @classmethod
    def build(
        cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1
    ) -> CharVocab:
        """Count characters over ``texts`` and keep the most frequent ones.

        Ties in frequency are broken by code point (smaller first), so equal
        inputs always give the same vocabulary.

        Args:
            texts: the corpus, any number of strings.
            max_size: the largest vocabulary, counting PAD and UNK (>= 3), or None
                for no cap. Characters beyond the cap are encoded as UNK.
            min_count: keep only characters seen at least this often (>= 1).

        Raises:
            DataError: ``max_size`` < 3 or ``min_count`` < 1.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text)
        return cls(chars=_most_frequent(counts, max_size, min_count, "character", key=ord))

    def __len__(self) -> int:
        """Vocabulary size, PAD and UNK included: token ids lie in [0, len(self))."""
        return len(self.chars) + _NUM_SPECIAL

    @functools.cached_property
    def _lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted code points of the characters, and the id of each."""
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        order = np.argsort(codes, kind="stable")
        return codes[order], (order + _NUM_SPECIAL).astype(np.int64)

    def encode(self, text: str, *, unknown: Literal["error", "unk"] = "error") -> np.ndarray:
        """Map ``text`` to token ids, one per character.

        Args:
            text: any string.
            unknown: ``"error"`` to refuse a character outside the vocabulary,
                ``"unk"`` to map it to :data:`UNK_ID`.

        Returns:
            An int64 array of shape (len(text),), ids in [1, len(self)) (never PAD).

        Raises:
            DataError: ``unknown="error"`` and a character is not in the vocabulary
                (the message names the first such character and its position).
            ValueError: ``unknown`` is neither "error" nor "unk".
        """
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        raw = text.encode("utf-32-le", "surrogatepass")
        codes = np.frombuffer(raw, dtype=np.uint32).astype(np.int64)
        sorted_codes, ids_of_sorted = self._lookup
        if len(sorted_codes) == 0:
            found = np.zeros(len(codes), dtype=bool)
            ids = np.full(len(codes), UNK_ID, dtype=np.int64)
        else:
            pos = np.clip(np.searchsorted(sorted_codes, codes), 0, len(sorted_codes) - 1)
            found = sorted_codes[pos] == codes
            ids = np.where(found, ids_of_sorted[pos], UNK_ID)
        if unknown == "error" and not found.all():
            at = int(np.argmin(found))
            raise DataError(
                f"character {text[at]!r} at position {at} is not in the vocabulary "
                f"({len(self)} ids); encode with unknown='unk' or rebuild the vocabulary"
            )
        return ids.astype(np.int64, copy=False)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Map token ids back to text: PAD is dropped, UNK shown as U+FFFD.

        Raises:
            DataError: an id is outside [0, len(self)).
        """
        array = _checked_ids(ids, len(self))
        table = ("", UNK_CHAR, *self.chars)
        return "".join(table[i] for i in array.tolist())

    def to_json(self) -> str:
        """The vocabulary as a JSON string (ASCII only); see :meth:`from_json`."""
        return json.dumps(
            {"kind": _JSON_KIND, "version": _JSON_VERSION, "chars": "".join(self.chars)},
            ensure_ascii=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CharVocab:
        """Rebuild a vocabulary from :meth:`to_json` output; ``from_json(v.to_json()) == v``.

        Raises:
            DataError: ``text`` is not a character vocabulary written by :meth:`to_json`.
        """
        data = _read_json(text, _JSON_KIND, _JSON_VERSION, "chars", str, "CharVocab")
        return cls(chars=tuple(data["chars"]))


def tokenize_words(text: str) -> list[str]:
    """Split ``text`` into the tokens a :class:`WordVocab` counts and encodes.

    Lowercases, then takes runs of letters and digits (apostrophes inside a word
    kept: ``"don't"``) and every other non-space character on its own.

    Example:
        >>> tokenize_words("Don't panic: it's GREAT!!")
        ["don't", 'panic', ':', "it's", 'great', '!', '!']
    """
    return _WORD_PATTERN.findall(text.lower())


@dataclass(frozen=True)
class WordVocab:
    """An ordered set of words; word ``words[i]`` has id ``i + 2``.

    Words are tokens as :func:`tokenize_words` makes them: lowercase, no spaces,
    one word or one punctuation mark each.

    Attributes:
        words: distinct tokens, in id order (most frequent first when made by
            :meth:`build`).
    """

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        _check_entries(
            self.words,
            field="words",
            unit="word",
            is_entry=lambda w: tokenize_words(w) == [w],
            rule="one lowercase token as tokenize_words splits text",
            builder="WordVocab",
        )

    @classmethod
    def build(
        cls, texts: Iterable[str], max_size: int | None = None, min_count: int = 1
    ) -> WordVocab:
        """Count tokens over ``texts`` and keep the most frequent ones.

        Ties in frequency are broken alphabetically, so equal inputs always give
        the same vocabulary.

        Args:
            texts: the corpus, any number of strings.
            max_size: the largest vocabulary, counting PAD and UNK (>= 3), or None
                for no cap. Words beyond the cap are encoded as UNK.
            min_count: keep only words seen at least this often (>= 1).

        Raises:
            DataError: ``max_size`` < 3 or ``min_count`` < 1.
        """
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(tokenize_words(text))
        return cls(words=_most_frequent(counts, max_size, min_count, "word", key=str))

    def __len__(self) -> int:
        """Vocabulary size, PAD and UNK included: token ids lie in [0, len(self))."""
        return len(self.words) + _NUM_SPECIAL

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {word: i + _NUM_SPECIAL for i, word in enumerate(self.words)}

    def encode(self, text: str, *, unknown: Literal["error", "unk"] = "error") -> np.ndarray:
        """Map ``text`` to token ids, one per token of :func:`tokenize_words`.

        Args:
            text: any string.
            unknown: ``"error"`` to refuse a word outside the vocabulary,
                ``"unk"`` to map it to :data:`UNK_ID`.

        Returns:
            An int64 array of shape (number of tokens,), ids in [1, len(self)) (never PAD).

        Raises:
            DataError: ``unknown="error"`` and a word is not in the vocabulary
                (the message names the first such word and its token position).
            ValueError: ``unknown`` is neither "error" nor "unk".
        """
        if unknown not in ("error", "unk"):
            raise ValueError(f"unknown must be 'error' or 'unk', got {unknown!r}")
        tokens = tokenize_words(text)
        ids = np.array([self._ids.get(t, UNK_ID) for t in tokens], dtype=np.int64)
        if unknown == "error" and (ids == UNK_ID).any():
            at = int(np.argmax(ids == UNK_ID))
            raise DataError(
                f"word {tokens[at]!r} at token {at} is not in the vocabulary "
                f"({len(self)} ids); encode with unknown='unk' or rebuild the vocabulary"
            )
        return ids

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """Map token ids back to tokens joined by spaces: PAD dropped, UNK shown as ``<unk>``.

        ``decode(encode(text))`` is ``" ".join(tokenize_words(text))`` when every
        word of ``text`` is in the vocabulary.

        Raises:
            DataError: an id is outside [0, len(self)).
        """
        array = _checked_ids(ids, len(self))
        table = ("", UNK_WORD, *self.words)
        return " ".join(table[i] for i in array.tolist() if i != PAD_ID)

    def to_json(self) -> str:
        """The vocabulary as a JSON string (ASCII only); see :meth:`from_json`."""
        return json.dumps(
            {"kind": _WORD_JSON_KIND, "version": _WORD_JSON_VERSION, "words": list(self.words)},
            ensure_ascii=True,
        )

    @classmethod
    def from_json(cls, text: str) -> WordVocab:
        """Rebuild a vocabulary from :meth:`to_json` output; ``from_json(v.to_json()) == v``.

        Raises:
            DataError: ``text`` is not a word vocabulary written by :meth:`to_json`.
        """
        data = _read_json(text, _WORD_JSON_KIND, _WORD_JSON_VERSION, "words", list, "WordVocab")
        return cls(words=tuple(data["words"]))


#: Either kind of vocabulary.
Vocab: TypeAlias = CharVocab | WordVocab

_KINDS: dict[str, type[CharVocab] | type[WordVocab]] = {
    _JSON_KIND: CharVocab,
    _WORD_JSON_KIND: WordVocab,
}


def vocab_from_json(text: str) -> Vocab:
    """Rebuild a vocabulary of either kind from its ``to_json`` output.

    Raises:
        DataError: ``text`` is not JSON, or not a vocabulary of a known kind and
            version, or its entries are invalid.
    """
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(f"vocabulary is not valid JSON ({exc}); was it saved by to_json?") from exc
    kind = data.get("kind") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in _KINDS:
        raise DataError(
            f"expected a vocabulary JSON object with kind {' or '.join(map(repr, _KINDS))}, "
            f"got {str(text)[:60]!r}; was it saved by CharVocab/WordVocab.to_json?"
        )
    return _KINDS[kind].from_json(text)


def _check_entries(
    entries: object,
    *,
    field: str,
    unit: str,
    is_entry: Callable[[str], bool],
    rule: str,
    builder: str,
) -> None:
    """A vocabulary's entries: a tuple of distinct strings, each one ``unit`` by ``rule``.

    Raises:
        DataError: naming the first entry that breaks the rule, or the first duplicate.
    """
    if not isinstance(entries, tuple):
        raise DataError(f"{field} must be a tuple of strings, got {type(entries).__name__}")
    bad = [e for e in entries if not isinstance(e, str) or not is_entry(e)]
    if bad:
        raise DataError(
            f"every vocabulary entry must be {rule}, got {bad[0]!r}; "
            f"build the vocabulary with {builder}.build"
        )
    if len(set(entries)) != len(entries):
        dup = next(e for e, n in Counter(entries).items() if n > 1)
        raise DataError(f"vocabulary {unit}s must be distinct, {dup!r} appears twice")


def _most_frequent(
    counts: Counter[str], max_size: int | None, min_count: int, unit: str, *, key: Callable
) -> tuple[str, ...]:
    """The tokens seen at least ``min_count`` times, most frequent first (ties by ``key``),
    at most ``max_size - 2`` of them (PAD and UNK take two ids).

    Raises:
        DataError: ``max_size`` < 3 or ``min_count`` < 1.
    """
    if max_size is not None and max_size < _NUM_SPECIAL + 1:
        raise DataError(f"max_size must be >= 3 (PAD, UNK and one {unit}), got {max_size}")
    if min_count < 1:
        raise DataError(f"min_count must be >= 1, got {min_count}")
    ranked = sorted(
        (t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], key(t))
    )
    if max_size is not None:
        ranked = ranked[: max_size - _NUM_SPECIAL]
    return tuple(ranked)


def _checked_ids(ids: Iterable[int] | np.ndarray, size: int) -> np.ndarray:
    """``ids`` as a flat int64 array, each in [0, size).

    Raises:
        DataError: an id is outside [0, size).
    """
    array = np.asarray(ids, dtype=np.int64).reshape(-1)
    if len(array) and (array.min() < 0 or array.max() >= size):
        bad = int(array[(array < 0) | (array >= size)][0])
        raise DataError(f"token id {bad} is outside [0, {size}); wrong vocabulary?")
    return array


def _read_json(
    text: str, kind: str, version: int, field: str, field_type: type, writer: str
) -> dict:
    """Parse a vocabulary's JSON and check its kind, version and main field."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"vocabulary is not valid JSON ({exc}); was it saved by {writer}.to_json?"
        ) from exc
    if (
        not isinstance(data, dict)
        or data.get("kind") != kind
        or not isinstance(data.get(field), field_type)
    ):
        raise DataError(
            f"expected a JSON object with kind {kind!r} and a {field!r} "
            f"{field_type.__name__}, got {str(text)[:60]!r}; was it saved by {writer}.to_json?"
        )
    if data.get("version") != version:
        raise DataError(
            f"vocabulary JSON version {data.get('version')!r} is not supported "
            f"(expected {version}); upgrade fedpriv"
        )
    return data
