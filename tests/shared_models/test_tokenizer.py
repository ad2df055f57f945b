"""CharVocab and WordVocab: build order, encode/decode round trips, unknown tokens,
JSON round trips, and reading either kind back with vocab_from_json."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.tokenizer import (
    PAD_ID,
    UNK_CHAR,
    UNK_ID,
    UNK_WORD,
    CharVocab,
    WordVocab,
    tokenize_words,
    vocab_from_json,
)

TEXT = (
    "Fellow-Citizens of the Senate and House of Representatives: In meeting you again "
    "I feel much satisfaction -- the progress of public credit (3.5%) is witnessed!\n"
)


def test_build_orders_by_frequency_then_code_point() -> None:
    vocab = CharVocab.build(["abracadabra", "c"])
    # a:5, b:2, r:2, c:2 (tie -> code point order), d:1
    assert vocab.chars == ("a", "b", "c", "r", "d")
    assert len(vocab) == 7
    assert vocab.encode("abcrd").tolist() == [2, 3, 4, 5, 6]


def test_build_is_deterministic_and_respects_caps() -> None:
    texts = [TEXT, TEXT.upper(), "zzz"]
    assert CharVocab.build(texts) == CharVocab.build(list(reversed(texts)))
    capped = CharVocab.build(texts, max_size=10)
    assert len(capped) == 10 and capped.chars == CharVocab.build(texts).chars[:8]
    assert "z" not in CharVocab.build(["zz", "aaa"], min_count=3).chars
    with pytest.raises(DataError, match="max_size must be >= 3"):
        CharVocab.build(texts, max_size=2)


def test_encode_decode_round_trip_on_real_text() -> None:
    vocab = CharVocab.build([TEXT])
    ids = vocab.encode(TEXT)
    assert ids.dtype == np.int64 and ids.shape == (len(TEXT),)
    assert ids.min() >= 2 and ids.max() < len(vocab)
    assert vocab.decode(ids) == TEXT
    assert vocab.encode("").shape == (0,) and vocab.decode([]) == ""


def test_decode_drops_pad_and_shows_unk() -> None:
    vocab = CharVocab.build(["ab"])
    ids = np.array([PAD_ID, PAD_ID, *vocab.encode("ab"), UNK_ID])
    assert vocab.decode(ids) == "ab" + UNK_CHAR
    with pytest.raises(DataError, match=r"token id 9 is outside \[0, 4\)"):
        vocab.decode([2, 9])


def test_unknown_character_error_names_character_and_position() -> None:
    vocab = CharVocab.build(["hello world"])
    with pytest.raises(DataError, match=r"character 'é' at position 4 is not in the vocabulary"):
        vocab.encode("hellé")
    with pytest.raises(DataError, match=r"character '\\n' at position 0"):
        vocab.encode("\nhello")


def test_unknown_characters_map_to_unk() -> None:
    vocab = CharVocab.build(["hello"])
    ids = vocab.encode("hé😀llo", unknown="unk")
    assert ids.tolist()[1:3] == [UNK_ID, UNK_ID]
    assert vocab.decode(ids) == f"h{UNK_CHAR}{UNK_CHAR}llo"
    with pytest.raises(ValueError, match="unknown must be"):
        vocab.encode("h", unknown="drop")  # type: ignore[arg-type]


def test_json_round_trip_keeps_ids() -> None:
    vocab = CharVocab.build([TEXT, "naïve — “quoted” 😀 \x02"])
    text = vocab.to_json()
    assert text.isascii()
    again = CharVocab.from_json(text)
    assert again == vocab and len(again) == len(vocab)
    assert np.array_equal(again.encode(TEXT), vocab.encode(TEXT))


@pytest.mark.parametrize(
    "text",
    ["not json", "[1, 2]", '{"kind": "bpe", "chars": "ab"}', '{"kind": "char-vocab"}'],
)
def test_from_json_rejects_foreign_input(text: str) -> None:
    with pytest.raises(DataError):
        CharVocab.from_json(text)


def test_vocab_validates_its_characters() -> None:
    with pytest.raises(DataError, match="twice"):
        CharVocab(chars=("a", "a"))
    with pytest.raises(DataError, match="one character"):
        CharVocab(chars=("ab",))


# ---------------------------------------------------------------- WordVocab

REVIEW = "Don't buy it: the plot is BORING, the acting worse... 2/10!"


def test_tokenize_words_lowercases_and_splits_punctuation() -> None:
    assert tokenize_words(REVIEW) == [
        "don't", "buy", "it", ":", "the", "plot", "is", "boring", ",", "the", "acting",
        "worse", ".", ".", ".", "2", "/", "10", "!",
    ]  # fmt: skip
    assert tokenize_words("  \n\t ") == []
    assert tokenize_words("Café's naïve 😀") == ["café's", "naïve", "😀"]


def test_word_build_orders_by_frequency_then_alphabet() -> None:
    vocab = WordVocab.build(["b a c a", "c b a"])
    # a:3, b:2, c:2 (tie -> alphabetical)
    assert vocab.words == ("a", "b", "c") and len(vocab) == 5
    assert vocab.encode("A c B").tolist() == [2, 4, 3]
    assert WordVocab.build(["x y", "y z"], max_size=3).words == ("y",)
    assert WordVocab.build(["x y", "y z"], min_count=2).words == ("y",)
    with pytest.raises(DataError, match="max_size must be >= 3"):
        WordVocab.build(["a"], max_size=2)


def test_word_encode_decode_round_trip() -> None:
    vocab = WordVocab.build([REVIEW])
    ids = vocab.encode(REVIEW)
    assert ids.dtype == np.int64 and ids.shape == (len(tokenize_words(REVIEW)),)
    assert ids.min() >= 2 and ids.max() < len(vocab)
    assert vocab.decode(ids) == " ".join(tokenize_words(REVIEW))
    assert vocab.decode(vocab.encode(vocab.decode(ids))) == vocab.decode(ids)
    assert vocab.encode("").shape == (0,) and vocab.decode([]) == ""


def test_word_decode_drops_pad_and_shows_unk() -> None:
    vocab = WordVocab.build(["good film"])
    ids = np.array([*vocab.encode("good film"), UNK_ID, PAD_ID, PAD_ID])
    assert vocab.decode(ids) == f"good film {UNK_WORD}"
    with pytest.raises(DataError, match=r"token id 4 is outside \[0, 4\)"):
        vocab.decode([2, 4])


def test_unknown_words_are_refused_or_mapped_to_unk() -> None:
    vocab = WordVocab.build(["a good film"])
    with pytest.raises(DataError, match=r"word 'bad' at token 1 is not in the vocabulary"):
        vocab.encode("a bad film")
    assert vocab.encode("a bad film", unknown="unk").tolist() == [2, UNK_ID, 3]  # a, film, good
    with pytest.raises(ValueError, match="unknown must be"):
        vocab.encode("a", unknown="drop")  # type: ignore[arg-type]


def test_word_json_round_trip_keeps_ids() -> None:
    vocab = WordVocab.build([REVIEW, "naïve — “quoted” 😀"])
    text = vocab.to_json()
    assert text.isascii() and '"kind": "word-vocab"' in text
    again = WordVocab.from_json(text)
    assert again == vocab
    assert np.array_equal(again.encode(REVIEW), vocab.encode(REVIEW))


def test_vocab_from_json_reads_either_kind_and_refuses_others() -> None:
    chars, words = CharVocab.build([REVIEW]), WordVocab.build([REVIEW])
    assert vocab_from_json(chars.to_json()) == chars
    assert vocab_from_json(words.to_json()) == words
    with pytest.raises(DataError, match="kind 'word-vocab'"):
        WordVocab.from_json(chars.to_json())
    with pytest.raises(DataError, match="kind 'char-vocab'"):
        CharVocab.from_json(words.to_json())
    for foreign in ('{"kind": "bpe", "merges": []}', "[1]", '"abc"'):
        with pytest.raises(DataError, match="kind 'char-vocab' or 'word-vocab'"):
            vocab_from_json(foreign)
    with pytest.raises(DataError, match="not valid JSON"):
        vocab_from_json("not json")
    with pytest.raises(DataError, match="version 2 is not supported"):
        vocab_from_json('{"kind": "word-vocab", "version": 2, "words": []}')


@pytest.mark.parametrize("entry", ["Good", "two words", "", "don't!", 3])
def test_word_vocab_refuses_entries_that_are_not_one_token(entry: object) -> None:
    with pytest.raises(DataError, match="one lowercase token"):
        WordVocab(words=("ok", entry))  # type: ignore[arg-type]
    with pytest.raises(DataError, match="twice"):
        WordVocab(words=("ok", "ok"))
