"""Local data folders: the format, its validation, reading and writing.

Every bad folder must give a one-line DataError naming the file and the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.folders import (
    IMAGE_CASES,
    IMAGE_META,
    NAN_X,
    TEXT_CASES,
    TEXT_META,
    TEXT_VOCAB,
    WORD_META,
    WORD_VOCAB,
    X,
    Y,
    _write_npz,
    images,
    tokens,
)

from fedpriv.client.data import load_local_data
from fedpriv.shared_models.data_folder import check_data, write_local_data, write_test_data
from fedpriv.shared_models.data_format import META_FILE, DataMeta
from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.registry import ModelConfig
from fedpriv.shared_models.tokenizer import CharVocab


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "node", *images(10), *images(4, seed=1), IMAGE_META)


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "text-node", *tokens(10), *tokens(4, seed=1), TEXT_META)


# -- a good folder ----------------------------------------------------------------------


def test_written_folder_passes_and_is_summarised(image_folder: Path) -> None:
    summary = check_data(image_folder)
    assert summary.role == "client"
    assert summary.meta == IMAGE_META
    assert summary.input_shape == (1, 4, 4)
    assert [(s.name, s.examples) for s in summary.splits] == [("train", 10), ("val", 4)]
    assert summary.splits[0].class_counts == (3, 3, 2, 2)
    assert summary.splits[1].class_counts == (1, 1, 1, 1)


def test_json_is_the_documented_format(image_folder: Path, text_folder: Path) -> None:
    assert json.loads((image_folder / META_FILE).read_text()) == {
        "format": "fedpriv-local-data",
        "version": 1,
        "role": "client",
        "task": "image",
        "dataset": "toy",
        "num_classes": 4,
        "in_channels": 1,
        "image_size": 4,
    }
    text = json.loads((text_folder / META_FILE).read_text())
    assert text["task"] == "text" and text["seq_len"] == 6
    assert CharVocab.from_json(json.dumps(text["vocab"])) == TEXT_VOCAB
    assert sorted(p.name for p in image_folder.iterdir()) == [META_FILE, "train.npz", "val.npz"]


def test_text_folder_round_trip(text_folder: Path) -> None:
    data = load_local_data(text_folder, partition_id=5, model="transformer")
    x, y = tokens(10)
    np.testing.assert_array_equal(data.x_train, x)
    np.testing.assert_array_equal(data.y_train, y)
    assert data.partition_id == 5
    assert data.model_config == ModelConfig(
        name="transformer", num_classes=3, vocab_size=len(TEXT_VOCAB), seq_len=6
    )
    with pytest.raises(ConfigError, match="is text; use --model lstm"):
        load_local_data(text_folder, partition_id=0, model="cnn")


# -- bad folders: each gives one clear line ------------------------------------------------


def test_word_vocab_folder_round_trip(tmp_path: Path) -> None:
    """A sentence-classification folder: the word vocabulary survives the JSON, and
    the model it implies averages over non-PAD positions."""
    x = np.stack([WORD_VOCAB.encode("a fine film"), WORD_VOCAB.encode("a dull plot")])
    x = np.pad(x, ((0, 0), (0, 2)))  # right-padded with PAD to seq_len 5
    y = np.array([1, 0], dtype=np.int64)
    folder = write_local_data(tmp_path / "words", x, y, x, y, WORD_META)
    raw = json.loads((folder / META_FILE).read_text())
    assert raw["vocab"] == {"kind": "word-vocab", "version": 1, "words": list(WORD_VOCAB.words)}
    assert check_data(folder).meta == WORD_META
    data = load_local_data(folder, partition_id=0, model="transformer")
    np.testing.assert_array_equal(data.x_train, x)
    assert data.model_config == ModelConfig(
        name="transformer", num_classes=2, vocab_size=9, seq_len=5, pooling="mean"
    )
    assert load_local_data(folder, partition_id=0, model="lstm").model_config.pooling == "mean"


def _check_one_line_error(folder: Path, phrase: str) -> None:
    with pytest.raises(DataError) as caught:
        check_data(folder)
    message = str(caught.value)
    assert phrase in message
    assert "\n" not in message
    assert str(folder) in message  # names the folder or a file in it


@pytest.mark.parametrize(
    ("spoil", "phrase"), [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES]
)
def test_bad_image_folder_is_refused(image_folder: Path, spoil, phrase: str) -> None:
    _check_one_line_error(spoil(image_folder), phrase)


@pytest.mark.parametrize(
    ("spoil", "phrase"), [c[1:] for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_bad_text_folder_is_refused(text_folder: Path, spoil, phrase: str) -> None:
    _check_one_line_error(spoil(text_folder), phrase)


def test_error_names_the_bad_file(image_folder: Path) -> None:
    _write_npz("val", x=X, y=Y + 1)(image_folder)
    with pytest.raises(DataError, match=r"node/val\.npz: labels"):
        check_data(image_folder)


def test_load_refuses_bad_folder_and_server_folder(image_folder: Path, tmp_path: Path) -> None:
    _write_npz("train", x=NAN_X, y=Y)(image_folder)
    with pytest.raises(DataError, match="NaN"):
        load_local_data(image_folder, partition_id=0, model="cnn")
    server = write_test_data(tmp_path / "server", *images(5), IMAGE_META)
    assert [s.name for s in check_data(server).splits] == ["test"]
    with pytest.raises(DataError, match="holds the coordinator's test set"):
        load_local_data(server, partition_id=0, model="cnn")


# -- writing -----------------------------------------------------------------------------


def test_write_refuses_a_non_empty_folder_and_keeps_it(image_folder: Path) -> None:
    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_local_data(image_folder, *images(3), *images(2), IMAGE_META)
    assert {p.name: p.read_bytes() for p in image_folder.iterdir()} == before


def test_write_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_local_data(tmp_path / "empty", *images(3), *images(2), IMAGE_META)
    assert check_data(tmp_path / "empty").splits[0].examples == 3


def test_write_checks_arrays_first_and_leaves_nothing(tmp_path: Path) -> None:
    x, y = images(3)
    with pytest.raises(DataError, match="val arrays .* labels must lie in"):
        write_local_data(tmp_path / "node", x, y, x, y + 3, IMAGE_META)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(DataError, match="No space left"):
        write_local_data(tmp_path / "node", *images(3), *images(2), IMAGE_META)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"task": "image", "num_classes": 4}, "in_channels must be >= 1"),
        (
            {"task": "image", "num_classes": 4, "in_channels": 1, "image_size": 4, "seq_len": 3},
            "seq_len must be 0",
        ),
        ({"task": "text", "num_classes": 4, "seq_len": 3}, "a text task needs its CharVocab"),
        (
            {"task": "text", "num_classes": 4, "seq_len": 3, "vocab": TEXT_VOCAB, "image_size": 4},
            "image_size must be 0",
        ),
        (
            {"task": "image", "num_classes": True, "in_channels": 1, "image_size": 4},
            "num_classes must be an integer",
        ),
    ],
)
def test_meta_is_validated(fields: dict, phrase: str) -> None:
    with pytest.raises(DataError, match=phrase):
        DataMeta(dataset="toy", **fields)
