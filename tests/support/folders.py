"""Data folders for tests: small arrays, their metadata, and ways to spoil a good folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedpriv.server.certs import init_deployment
from fedpriv.shared_models.data_folder import write_local_data, write_test_data
from fedpriv.shared_models.data_format import META_FILE, DataMeta
from fedpriv.shared_models.tokenizer import CharVocab, WordVocab

IMAGE_META = DataMeta(task="image", dataset="toy", num_classes=4, in_channels=1, image_size=4)
TEXT_VOCAB = CharVocab.build(["abc de"])  # 8 ids: PAD, UNK and 6 characters
TEXT_META = DataMeta(task="text", dataset="toy-text", num_classes=3, seq_len=6, vocab=TEXT_VOCAB)
WORD_VOCAB = WordVocab.build(["a fine film , a dull plot ."])  # 9 ids: PAD, UNK and 7 words
WORD_META = DataMeta(task="text", dataset="toy-words", num_classes=2, seq_len=5, vocab=WORD_VOCAB)


def images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 4, 4), dtype=np.float32)
    return x, np.arange(n, dtype=np.int64) % 4


def tokens(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, len(TEXT_VOCAB), (n, 6)), np.arange(n, dtype=np.int64) % 3


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


X, Y = images(10)
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

T, TY = tokens(10)
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


DIGITS_META = DataMeta(task="image", dataset="digits", num_classes=10, in_channels=1, image_size=8)


def make_site(root: Path) -> Path:
    """A deployment folder, client and test folders (good, corrupt, wrong role), a used folder."""
    init_deployment(root / "dep", hosts=[], nodes=1, force=False)
    (root / "empty").mkdir()
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    y = np.arange(20, dtype=np.int64) % 10
    write_local_data(root / "client", x, y, x[:5], y[:5], DIGITS_META)
    write_test_data(root / "test", x, y, DIGITS_META)
    (root / "used").mkdir()
    (root / "used" / "keep.txt").write_text("earlier results")
    write_local_data(root / "corrupt", x, y, x[:5], y[:5], DIGITS_META)
    (root / "corrupt" / "privacy-ledger.json").write_text("{truncated")
    return root
