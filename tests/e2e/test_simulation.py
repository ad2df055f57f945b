"""End to end: real Flower simulation (Ray), real Opacus, real digits.

These run the README's main job. They are the slow part of the suite
(about 30-40 s each on 2 cores).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

FEDPRIV_SIM = str(Path(sys.executable).with_name("fedpriv-sim"))
RUN_FILES = {
    "config.json",
    "metrics.jsonl",
    "privacy_ledger.jsonl",
    "summary.json",
    "accuracy_epsilon.png",
    "model.safetensors",
}


def _run(out: Path, *flags: str) -> tuple[dict, list[dict], list[dict], str]:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [FEDPRIV_SIM, "--out", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ledger = [json.loads(line) for line in (out / "privacy_ledger.jsonl").read_text().splitlines()]
    return summary, metrics, ledger, proc.stderr


@pytest.mark.slow
def test_default_run_learns_under_dp_within_budget(tmp_path):
    """The README's first command: fedpriv-sim with no flags (but --out)."""
    summary, metrics, ledger, stderr = _run(tmp_path / "run")
    assert RUN_FILES <= {p.name for p in (tmp_path / "run").iterdir()}
    assert summary["rounds_completed"] == 20 and summary["stopped_early"] is None
    assert summary["test_accuracy"] >= 0.75
    privacy = summary["privacy"]
    assert privacy["epsilon_max"] <= 8.0 and privacy["delta"] == 1e-5
    assert "RDP" in privacy["accountant"] and "cumulative" in privacy["guarantee"]
    # progress: one line per round with the cumulative epsilon and its delta
    lines = [line for line in stderr.splitlines() if line.startswith("round ")]
    assert len(lines) == 20 and all(
        "example-level, cumulative, δ=1e-05, RDP" in line for line in lines
    )
    # cumulative epsilon never falls; every client's ledger re-composes with Google's library
    eps = [m["epsilon_max"] for m in metrics]
    assert eps == sorted(eps)
    by_client: dict[int, RdpAccountant] = {}
    for row in ledger:
        acc = by_client.setdefault(row["partition_id"], RdpAccountant())
        acc.compose(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(
                    row["sample_rate"], dp_accounting.GaussianDpEvent(row["noise_multiplier"])
                ),
                row["steps"],
            )
        )
        assert row["epsilon"] == pytest.approx(acc.get_epsilon(row["delta"]), rel=0.01)
    assert len(by_client) == 10


@pytest.mark.slow
def test_same_run_without_dp_reaches_90_percent(tmp_path):
    summary, metrics, ledger, _ = _run(tmp_path / "run", "--no-dp")
    assert summary["test_accuracy"] >= 0.90
    assert summary["privacy"]["epsilon_max"] is None
    assert all(row["dp_enabled"] is False for row in ledger)
    assert not any(m["epsilon_max"] for m in metrics)


@pytest.mark.slow
def test_dirichlet_fedadam_partial_participation_run(tmp_path):
    """Another strategy, non-IID split and client sampling complete and learn."""
    summary, metrics, _, _ = _run(
        tmp_path / "run",
        "--clients",
        "6",
        "--rounds",
        "4",
        "--fraction",
        "0.5",
        "--partitioning",
        "dirichlet",
        "--alpha",
        "1.0",
        "--strategy",
        "fedavgm",
        "--target-epsilon",
        "4",
        "--accountant",
        "prv",
    )
    assert [m["trained"] for m in metrics] == [3, 3, 3, 3]
    assert summary["privacy"]["epsilon_max"] <= 4.0
    assert math.isfinite(summary["test_accuracy"])
    assert metrics[-1]["test_accuracy"] > metrics[0]["test_accuracy"]
