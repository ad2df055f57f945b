"""Bad input to fedpriv-sim: one clear error line, a non-zero exit, no traceback,
and nothing started or overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from simulations.cli import main

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))


def _corrupt_fashion_dir(tmp_path: Path) -> str:
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (folder / name).write_bytes(b"\x12\x34 not an idx file at all")
    return str(folder)


CASES = [
    (["--model", "foo"], 1, "unknown model 'foo'"),
    (["--dataset", "foo"], 1, "unknown dataset 'foo'"),
    (["--target-epsilon", "0"], 1, "target epsilon must be a positive number"),
    (["--target-epsilon", "-1"], 1, "target epsilon must be a positive number"),
    (["--clients", "5000"], 1, "cannot split 1437 examples into 5000 clients"),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], 1, "/nonexistent/fm"),
    (["--rounds", "abc"], 2, "'abc' is not a valid integer"),
    (["--bogus-flag"], 2, "No such option '--bogus-flag'"),
    (["--no-dp", "--target-epsilon", "3"], 1, "--no-dp cannot be combined"),
    (["--delta", "1.5"], 1, "delta must be in (0, 1)"),
    (["--noise-multiplier", "0"], 1, "noise multiplier must be > 0"),
    (["--fraction", "0"], 1, "fraction-train must be in (0, 1]"),
    (["--partitioning", "zipf"], 1, "unknown partition scheme 'zipf'"),
    (["--strategy", "fedprox"], 1, "unknown strategy 'fedprox'"),
    (["--accountant", "gdp"], 1, "unknown accountant 'gdp'"),
    (["--model", "lstm"], 1, "needs a text dataset"),
    (["--clients", "700", "--partitioning", "dirichlet", "--alpha", "0.05"], 1, "Dirichlet"),
]


def _assert_one_error_line(err: str, needle: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("fedpriv-sim: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(("args", "code", "needle"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gives_one_line_and_nonzero_exit(args, code, needle, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out)])
    assert exit_info.value.code == code
    _assert_one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()  # failed before anything was created or started


def test_corrupt_data_file_is_refused(tmp_path, capsys):
    args = ["--dataset", "fashion-mnist", "--data-dir", _corrupt_fashion_dir(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 1
    _assert_one_error_line(capsys.readouterr().err, "magic")


def test_existing_run_folder_is_never_touched(tmp_path, capsys):
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["--rounds", "1", "--out", str(out)])
    assert exit_info.value.code == 1
    _assert_one_error_line(capsys.readouterr().err, "already exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--model", "foo"], "unknown model"), (["--target-epsilon", "-1"], "target epsilon")],
)
def test_real_console_script_prints_one_line(args, needle, tmp_path):
    proc = subprocess.run(
        [FEDPRIV_SIM, *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    _assert_one_error_line(proc.stderr, needle)
    assert proc.stdout == ""
