"""Local data folders of deployed nodes: the format, its validation, the export
from a simulation dataset, and ``fedpriv-client check-data``.

Every bad folder must give a one-line DataError naming the file and the problem,
and ``fedpriv-client check-data`` on it exactly one stderr line and exit code 1.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.cli import main
from client.local_data import (
    META_FILE,
    DataMeta,
    check_data,
    load_local_data,
    write_local_data,
    write_test_data,
)
from shared_models.config import RunConfig
from shared_models.errors import ConfigError, DataError
from shared_models.registry import ModelConfig
from shared_models.tokenizer import CharVocab, WordVocab
from simulations.apps import load_client_data, load_partitions, model_config_for
from simulations.export import SERVER_TEST_FOLDER, export_partitions

FEDPRIV_CLIENT = str(Path(sys.executable).with_name("fedpriv-client"))
IMAGE_META = DataMeta(task="image", dataset="toy", num_classes=4, in_channels=1, image_size=4)
TEXT_VOCAB = CharVocab.build(["abc de"])  # 8 ids: PAD, UNK and 6 characters
TEXT_META = DataMeta(task="text", dataset="toy-text", num_classes=3, seq_len=6, vocab=TEXT_VOCAB)
WORD_VOCAB = WordVocab.build(["a fine film , a dull plot ."])  # 9 ids: PAD, UNK and 7 words
WORD_META = DataMeta(task="text", dataset="toy-words", num_classes=2, seq_len=5, vocab=WORD_VOCAB)


def _images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 4, 4), dtype=np.float32)
    return x, np.arange(n, dtype=np.int64) % 4


def _tokens(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(TEXT_VOCAB), (n, 6)), np.arange(n, dtype=np.int64) % 3


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "node", *_images(10), *_images(4, seed=1), IMAGE_META)


@pytest.fixture
def text_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "text-node", *_tokens(10), *_tokens(4, seed=1), TEXT_META)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "digits"
    export_partitions("digits", 3, out)
    return out


def _simulated_client(config: RunConfig, partition_id: int):
    context = Context(
        run_id=1,
        node_id=partition_id,
        node_config={"partition-id": partition_id, "num-partitions": config.num_clients},
        state=RecordDict(),
        run_config={},
    )
    return load_client_data(context, config)


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
    x, y = _tokens(10)
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


def _edit_json(**changes: object) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        meta = json.loads((folder / META_FILE).read_text())
        for key, value in changes.items():
            if value is None:
                del meta[key]
            else:
                meta[key] = value
        (folder / META_FILE).write_text(json.dumps(meta))
        return folder

    return edit


def _write_npz(split: str, **arrays: np.ndarray) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        np.savez(folder / f"{split}.npz", **arrays)
        return folder

    return edit


def _remove(name: str) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        (folder / name).unlink()
        return folder

    return edit


def _write_bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder

    return edit


def _truncate(name: str) -> Callable[[Path], Path]:
    def edit(folder: Path) -> Path:
        raw = (folder / name).read_bytes()
        (folder / name).write_bytes(raw[: len(raw) // 2])
        return folder

    return edit


X, Y = _images(10)
NAN_X = X.copy()
NAN_X[3, 0, 1, 2] = np.nan

# (case id, how to spoil a good image folder, a phrase the error must contain)
IMAGE_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("missing folder", lambda f: f / "absent", "absent does not exist"),
    ("a file, not a folder", lambda f: f / "train.npz", "is not a folder"),
    ("missing json", _remove(META_FILE), f"{META_FILE} is missing"),
    ("malformed json", _write_bytes(META_FILE, b'{"format": '), "is not valid JSON"),
    ("json not an object", _write_bytes(META_FILE, b"[1, 2]"), "must hold a JSON object"),
    ("foreign json", _edit_json(format="something-else"), "field 'format' must be"),
    ("newer version", _edit_json(version=2), "format version 2 is not supported"),
    ("missing field", _edit_json(num_classes=None), "field 'num_classes' is missing"),
    ("unknown field", _edit_json(**{"image-size": 8}), "unknown field 'image-size'"),
    ("text field on images", _edit_json(seq_len=5), "unknown field 'seq_len'"),
    ("bad role", _edit_json(role="coordinator"), "field 'role' must be"),
    ("bad task", _edit_json(task="audio"), "field 'task' must be one of image, text"),
    ("missing task", _edit_json(task=None), "field 'task' must be one of image, text, got None"),
    ("num_classes not int", _edit_json(num_classes="4"), "num_classes must be an integer"),
    ("one class", _edit_json(num_classes=1), "num_classes must be >= 2"),
    ("missing npz", _remove("val.npz"), "val.npz is missing"),
    ("not an npz", _write_bytes("train.npz", b"x,y\n1,2\n"), "is not an .npz archive"),
    ("truncated npz", _truncate("train.npz"), "train.npz"),
    ("wrong array names", _write_npz("train", inputs=X, y=Y), "exactly the arrays x and y"),
    ("x float64", _write_npz("train", x=X.astype(np.float64), y=Y), "x must be float32"),
    ("x uint8", _write_npz("train", x=(X * 255).astype(np.uint8), y=Y), "x must be float32"),
    ("y int32", _write_npz("train", x=X, y=Y.astype(np.int32)), "y must be int64"),
    ("y 2-d", _write_npz("train", x=X, y=Y[:, None]), "y must be int64 labels of shape (N,)"),
    (
        "wrong image size",
        _write_npz("train", x=np.zeros((10, 1, 5, 5), np.float32), y=Y),
        "x must have shape (N, 1, 4, 4)",
    ),
    ("missing channel axis", _write_npz("train", x=X[:, 0], y=Y), "x must have shape (N, 1, 4, 4)"),
    ("label too large", _write_npz("val", x=X, y=Y + 1), "labels must lie in [0, 4)"),
    ("negative label", _write_npz("val", x=X, y=Y - 1), "got values in [-1, 2]"),
    ("NaN pixel", _write_npz("train", x=NAN_X, y=Y), "1 NaN or infinite"),
    ("pixels in 0..255", _write_npz("train", x=X * 255, y=Y), "pixel values must lie in [0, 1]"),
    ("empty train", _write_npz("train", x=X[:0], y=Y[:0]), "train.npz: no examples"),
    ("x/y length mismatch", _write_npz("train", x=X, y=Y[:9]), "x has 10 examples but y has 9"),
    (
        "object array (pickle)",
        _write_npz("train", x=np.array([X[0], "evil"], dtype=object), y=Y[:2]),
        "holds object arrays",
    ),
]

T, TY = _tokens(10)
TEXT_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    (
        "token id beyond vocab",
        _write_npz("train", x=T + len(TEXT_VOCAB), y=TY),
        f"token ids must lie in [0, {len(TEXT_VOCAB)})",
    ),
    (
        "negative token id",
        _write_npz("train", x=T - 1, y=TY),
        f"token ids must lie in [0, {len(TEXT_VOCAB)})",
    ),
    ("float tokens", _write_npz("train", x=T.astype(np.float32), y=TY), "x must be int64"),
    ("wrong seq_len", _write_npz("val", x=T[:, :5], y=TY), "x must have shape (N, 6)"),
    ("missing vocab", _edit_json(vocab=None), "field 'vocab' is missing"),
    ("vocab as a string", _edit_json(vocab="abc"), "kind 'char-vocab' or 'word-vocab'"),
    ("unknown vocab kind", _edit_json(vocab={"kind": "bpe"}), "kind 'char-vocab' or 'word-vocab'"),
    (
        "word vocab entry not one token",
        _edit_json(vocab={"kind": "word-vocab", "version": 1, "words": ["Two Words"]}),
        "one lowercase token",
    ),
    (
        "word vocab too small for the ids",
        _edit_json(vocab={"kind": "word-vocab", "version": 1, "words": ["a"]}),
        "token ids must lie in [0, 3)",
    ),
    ("image field on text", _edit_json(image_size=8), "unknown field 'image_size'"),
]


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
    server = write_test_data(tmp_path / "server", *_images(5), IMAGE_META)
    assert [s.name for s in check_data(server).splits] == ["test"]
    with pytest.raises(DataError, match="holds the coordinator's test set"):
        load_local_data(server, partition_id=0, model="cnn")


# -- writing -----------------------------------------------------------------------------


def test_write_refuses_a_non_empty_folder_and_keeps_it(image_folder: Path) -> None:
    before = {p.name: p.read_bytes() for p in image_folder.iterdir()}
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_local_data(image_folder, *_images(3), *_images(2), IMAGE_META)
    assert {p.name: p.read_bytes() for p in image_folder.iterdir()} == before


def test_write_into_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    write_local_data(tmp_path / "empty", *_images(3), *_images(2), IMAGE_META)
    assert check_data(tmp_path / "empty").splits[0].examples == 3


def test_write_checks_arrays_first_and_leaves_nothing(tmp_path: Path) -> None:
    x, y = _images(3)
    with pytest.raises(DataError, match="val arrays .* labels must lie in"):
        write_local_data(tmp_path / "node", x, y, x, y + 3, IMAGE_META)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_local_data(tmp_path / "node", *_images(3), *_images(2), IMAGE_META)
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


# -- export from a simulation dataset ----------------------------------------------------


def test_export_gives_each_client_its_simulated_data(digits_export: Path) -> None:
    config = RunConfig(dataset="digits", num_clients=3)
    data, parts = load_partitions(config)
    total = 0
    for partition_id in range(3):
        folder = digits_export / f"client-{partition_id}"
        assert [s.name for s in check_data(folder).splits] == ["train", "val"]
        exported = load_local_data(folder, partition_id=partition_id, model="cnn")
        simulated = _simulated_client(config, partition_id)
        for name in ("x_train", "y_train", "x_val", "y_val"):
            np.testing.assert_array_equal(getattr(exported, name), getattr(simulated, name))
        assert exported.model_config == simulated.model_config == model_config_for(config, data)
        total += len(exported.y_train) + len(exported.y_val)
    assert total == len(data.pool) == sum(map(len, parts))  # iid covers the whole pool


def test_export_writes_the_central_test_set(digits_export: Path) -> None:
    data, _ = load_partitions(RunConfig(dataset="digits", num_clients=3))
    summary = check_data(digits_export / SERVER_TEST_FOLDER)
    assert summary.role == "server"
    assert summary.splits[0].examples == len(data.test)
    with np.load(digits_export / SERVER_TEST_FOLDER / "test.npz") as test:
        np.testing.assert_array_equal(test["x"], data.test.x)
        np.testing.assert_array_equal(test["y"], data.test.y)
    assert sorted(p.name for p in digits_export.iterdir()) == [
        "client-0",
        "client-1",
        "client-2",
        SERVER_TEST_FOLDER,
    ]


def test_export_follows_the_partitioning(tmp_path: Path) -> None:
    config = RunConfig(dataset="digits", num_clients=4, partitioning="dirichlet", seed=3)
    folders = export_partitions("digits", 4, tmp_path / "out", partitioning="dirichlet", seed=3)
    for partition_id, folder in enumerate(folders):
        exported = load_local_data(folder, partition_id=partition_id, model="cnn")
        np.testing.assert_array_equal(
            exported.y_train, _simulated_client(config, partition_id).y_train
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [
        ({"dataset": "mnist", "num_clients": 3}, ConfigError, "unknown dataset 'mnist'"),
        ({"dataset": "digits", "num_clients": 5000}, ConfigError, "cannot split 1437"),
        ({"dataset": "digits", "num_clients": 3, "partitioning": "zipf"}, ConfigError, "zipf"),
    ],
)
def test_failed_export_leaves_nothing(tmp_path: Path, kwargs: dict, error, phrase: str) -> None:
    with pytest.raises(error, match=phrase):
        export_partitions(out_dir=tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_a_non_empty_folder(digits_export: Path) -> None:
    with pytest.raises(DataError, match="already exists and is not empty"):
        export_partitions("digits", 3, digits_export)


@pytest.fixture(scope="module")
def corpora() -> Path:
    from simulations.text_data import DEFAULT_DATA_DIR, fetch_corpora

    # sentiment's word vocabulary is counted over the Brown corpus
    fetch_corpora(DEFAULT_DATA_DIR, ["sentiment", "brown"])  # a no-op once cached
    return DEFAULT_DATA_DIR


def test_export_text_round_trip(corpora: Path, tmp_path: Path) -> None:
    config = RunConfig(model="lstm", dataset="sentiment", num_clients=2)
    data, _ = load_partitions(config)
    folders = export_partitions("sentiment", 2, tmp_path / "out")
    summary = check_data(folders[1])
    assert summary.meta.vocab == data.vocab
    assert summary.input_shape == (data.seq_len,)
    exported = load_local_data(folders[1], partition_id=1, model="lstm")
    simulated = _simulated_client(config, 1)
    np.testing.assert_array_equal(exported.x_train, simulated.x_train)
    np.testing.assert_array_equal(exported.y_val, simulated.y_val)
    assert exported.model_config == model_config_for(config, data)
    assert exported.model_config.pooling == "mean"  # sentence classification
    assert check_data(tmp_path / "out" / SERVER_TEST_FOLDER).meta.vocab == data.vocab


# -- fedpriv-client ----------------------------------------------------------------------


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check_data_good_folder(digits_export: Path, capsys) -> None:
    code, out, err = _run_main(["check-data", str(digits_export / "client-0")], capsys)
    assert code == 0, err
    assert "valid client data folder" in out
    assert "10 classes" in out and "1 x 8 x 8" in out
    assert "train" in out and "val" in out


@pytest.mark.parametrize(
    ("spoil", "phrase"), [c[1:] for c in IMAGE_CASES], ids=[c[0] for c in IMAGE_CASES]
)
def test_cli_check_data_bad_folder(image_folder: Path, spoil, phrase: str, capsys) -> None:
    code, out, err = _run_main(["check-data", str(spoil(image_folder))], capsys)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedpriv-client: error: "), err
    assert phrase in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["check-data"],
        ["check-data", "a", "b"],
        ["no-such-command"],
        ["export-demo-data", "--clients", "three", "out"],
        ["export-demo-data", "--bogus", "out"],
    ],
)
def test_cli_malformed_command_line(args: list[str], capsys) -> None:
    code, _, err = _run_main(args, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedpriv-client: error: "), err


def test_cli_export_demo_data(tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "demo"
    code, out, err = _run_main(
        ["export-demo-data", "--dataset", "digits", "--clients", "2", str(out_dir)], capsys
    )
    assert code == 0, err
    assert f"{out_dir / 'client-1'}:" in out and SERVER_TEST_FOLDER in out
    assert check_data(out_dir / "client-1").splits[0].examples > 0
    code, _, err = _run_main(["export-demo-data", str(out_dir)], capsys)
    assert code == 1 and "already exists and is not empty" in err


def test_installed_command(tmp_path: Path) -> None:
    result = subprocess.run(
        [FEDPRIV_CLIENT, "check-data", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"fedpriv-client: error: data folder {tmp_path / 'absent'} does not exist; "
        "write the folder with fedpriv-client export-demo-data or client.local_data"
    ]
