"""Bad input to fedpriv-sim: one clear error line, a non-zero exit, no traceback,
and nothing started or overwritten.

Exit codes: 2 for a malformed command line (unknown flag, malformed number,
missing value), 1 for a bad setting or bad data. Every case fails in the
up-front checks, before Ray starts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv.shared_models.checkpoint import save_checkpoint
from fedpriv.shared_models.registry import ModelConfig, build_model
from fedpriv.simulations.cli import main

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


# (args, exit code, a word the error line must contain); "{tmp}" is the test's tmp_path.
CASES = [
    # malformed command line: exit 2
    (["--bogus-flag"], 2, "No such option '--bogus-flag'"),
    (["--rounds", "abc"], 2, "'abc' is not a valid integer"),
    (["--clients", "1.5"], 2, "'1.5' is not a valid integer"),
    (["--target-epsilon", "eight"], 2, "'eight' is not a valid float"),
    (["--rounds"], 2, "'--rounds' requires an argument"),
    # bad settings: exit 1
    (["--model", "foo"], 1, "unknown model 'foo'"),
    (["--model", "lstm"], 1, "needs a text dataset"),
    (["--dataset", "foo"], 1, "unknown dataset 'foo'"),
    (["--target-epsilon", "0"], 1, "target epsilon must be a positive number, got 0.0"),
    (["--target-epsilon", "-1"], 1, "target epsilon must be a positive number, got -1.0"),
    (["--no-dp", "--target-epsilon", "3"], 1, "--no-dp cannot be combined"),
    (["--no-dp", "--noise-multiplier", "1"], 1, "--no-dp cannot be combined"),
    (["--delta", "0"], 1, "delta must be in (0, 1), got 0.0"),
    (["--delta", "1.5"], 1, "delta must be in (0, 1), got 1.5"),
    (["--noise-multiplier", "0"], 1, "noise multiplier must be > 0, got 0.0"),
    (["--noise-multiplier", "-1"], 1, "noise multiplier must be > 0, got -1.0"),
    (["--fraction", "0"], 1, "fraction-train must be in (0, 1], got 0.0"),
    (["--fraction", "1.5"], 1, "fraction-train must be in (0, 1], got 1.5"),
    (["--partitioning", "zipf"], 1, "unknown partition scheme 'zipf'"),
    (["--strategy", "fedprox"], 1, "unknown strategy 'fedprox'"),
    (["--accountant", "gdp"], 1, "unknown accountant 'gdp'"),
    (["--clients", "5000"], 1, "cannot split 1437 examples into 5000 clients"),
    (["--clients", "700", "--partitioning", "dirichlet", "--alpha", "0.05"], 1, "Dirichlet"),
    (["--target-epsilon", "0.0001"], 1, "cannot reach epsilon 0.0001 at delta 1e-05"),
    (["--client-dp", "server-fixed"], 1, "needs --client-epsilon (a budget) or --client-noise"),
    (["--client-dp", "central"], 1, "unknown client-level DP mode 'central'"),
    (
        ["--client-dp", "server-fixed", "--client-epsilon", "3", "--strategy", "krum"],
        1,
        "client-level DP needs --strategy fedavg",
    ),
    (
        ["--client-dp", "server-fixed", "--client-epsilon", "3", "--freeze", "features"],
        1,
        "cannot be combined with --freeze",
    ),
    (["--client-dp", "server-fixed", "--client-epsilon", "-2"], 1, "client-epsilon must be > 0"),
    (
        ["--client-dp", "server-fixed", "--client-epsilon", "0.00001"],
        1,
        "client-level DP: cannot reach epsilon 1e-05",
    ),
    (
        ["--client-dp", "client-adaptive", "--client-noise", "1", "--client-clip-quantile", "1.5"],
        1,
        "client-clip-quantile must be in (0, 1)",
    ),
    (["--max-update-norm", "-3"], 1, "max-update-norm must be > 0, got -3.0"),
    (["--norm-bound", "0"], 1, "norm-bound must be > 0, got 0.0"),
    (["--byzantine-fraction", "0.6"], 1, "byzantine-fraction must be in [0, 0.5)"),
    (["--faults", "boom:1"], 1, "unknown fault 'boom'"),
    (["--faults", "nan:11"], 1, "more faulty clients than --clients 10"),
    (["--keep-checkpoints", "0"], 1, "keep-checkpoints must be an integer >= 1"),
    # bad data: exit 1
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fm"], 1, "/nonexistent/fm"),
    (["--dataset", "fashion-mnist", "--data-dir", "{tmp}/garbage"], 1, "magic"),
    (["--dataset", "fashion-mnist", "--data-dir", "{tmp}/bad-gzip"], 1, "damaged"),
    (["--dataset", "fashion-mnist", "--data-dir", "{tmp}/one-missing"], 1, "t10k-labels"),
]


@pytest.fixture
def data_dirs(tmp_path: Path) -> Path:
    """Three broken fashion-mnist folders under tmp_path; the other files are garbage too."""
    for folder, train_images, left_out in (
        ("garbage", b"\x12\x34\x56 garbage", None),  # not an IDX file
        ("bad-gzip", b"\x1f\x8b\x08 cut short", None),  # gzip magic, damaged stream
        ("one-missing", b"\x12\x34", FASHION_FILES[3]),
    ):
        (tmp_path / folder).mkdir()
        for name in FASHION_FILES:
            if name != left_out:
                content = train_images if name == FASHION_FILES[0] else b"\x12\x34 not idx"
                (tmp_path / folder / name).write_bytes(content)
    return tmp_path


def _assert_one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), err
    assert lines[0].startswith("fedpriv-sim: error: "), err
    assert needle in lines[0], err


@pytest.mark.parametrize(("args", "code", "needle"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gives_one_line_and_nonzero_exit(args, code, needle, data_dirs, capsys):
    out = data_dirs / "run"
    args = [a.replace("{tmp}", str(data_dirs)) for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(out), *args])
    _assert_one_error_line(capsys.readouterr().err, needle)
    assert exit_info.value.code == code
    assert not out.exists()  # failed before anything was created or started


def test_out_under_a_file_gives_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        main(["--rounds", "1", "--out", str(tmp_path / "a-file" / "run")])
    _assert_one_error_line(capsys.readouterr().err, "cannot create output folder")
    assert exit_info.value.code == 1


def _assert_untouched(out: Path) -> None:
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "precious"


@pytest.fixture
def earlier_run(tmp_path: Path) -> Path:
    out = tmp_path / "earlier-run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    return out


def test_existing_run_folder_is_never_touched(earlier_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--rounds", "1", "--out", str(earlier_run)])
    _assert_one_error_line(capsys.readouterr().err, "already exists and is not empty")
    assert exit_info.value.code == 1
    _assert_untouched(earlier_run)


def test_checks_that_log_progress_still_give_one_line(earlier_run, tmp_path, capsys):
    # Loading --init-checkpoint logs a progress line; the later --out failure must hide it.
    config = ModelConfig(name="cnn", num_classes=10, in_channels=1, image_size=8)
    checkpoint = save_checkpoint(
        tmp_path / "start.safetensors", build_model(config).state_dict(), config
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--init-checkpoint", str(checkpoint), "--out", str(earlier_run)])
    _assert_one_error_line(capsys.readouterr().err, "already exists and is not empty")
    assert exit_info.value.code == 1
    _assert_untouched(earlier_run)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--model", "foo"], "unknown model 'foo'"), (["--target-epsilon", "-1"], "got -1.0")],
)
def test_real_console_script_prints_one_line(args, needle, tmp_path):
    proc = subprocess.run(
        [FEDPRIV_SIM, *args, "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_error_line(proc.stderr, needle)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert not (tmp_path / "run").exists()
