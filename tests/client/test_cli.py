"""``fedpriv-client``: ``check-data``, ``budget`` and ``start``: one line for every bad input,
exit code 1, before any Flower process starts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.folders import IMAGE_CASES, IMAGE_META, images, make_site

from fedpriv.client.cli import main
from fedpriv.client.cli import main as client_main
from fedpriv.client.ledger_store import read_ledger, write_ledger
from fedpriv.shared_models.data_folder import write_local_data
from fedpriv.shared_models.ledger import PrivacyLedger
from fedpriv.simulations.export import export_partitions

FEDPRIV_CLIENT = str(Path(sys.executable).with_name("fedpriv-client"))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_local_data(tmp_path / "node", *images(10), *images(4, seed=1), IMAGE_META)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "digits"
    export_partitions("digits", 3, out)
    return out


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
        ["export-demo-data", "out"],
    ],
)
def test_cli_malformed_command_line(args: list[str], capsys) -> None:
    code, _, err = _run_main(args, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedpriv-client: error: "), err


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
        "write the folder with fedpriv-sim export-demo-data or "
        "fedpriv.shared_models.data_folder"
    ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_site(tmp_path_factory.mktemp("site"))


CLIENT_CASES = [
    (["--data", "{s}/missing"], "data folder {s}/missing does not exist"),
    (["--data", "{s}/test"], "holds the coordinator's test set"),
    (["--data", "{s}/empty"], "fedpriv-data.json"),
    (["--server", "localhost"], "--server must be HOST:PORT"),
    (["--key", "{s}/dep/nodes/node-1.pub"], "not an unencrypted OpenSSH private key"),
    (["--ca", "{s}/dep/nodes/node-1.key"], "not a PEM certificate"),
    (["--ca", "{s}/nope.crt"], "not found"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--max-wait", "-5"], "--max-wait must be >= 0"),
    (["--budget", "-1"], "--budget must be a positive epsilon"),
    (["--data", "{s}/corrupt"], "privacy ledger {s}/corrupt/privacy-ledger.json is corrupt"),
]


@pytest.mark.parametrize(("override", "needle"), CLIENT_CASES)
def test_client_start_refuses_bad_input(site, override, needle, capsys, monkeypatch):
    from fedpriv.client import node as client_node

    started = []
    monkeypatch.setattr(client_node, "run_node", lambda *a, **k: started.append(a))
    args = {
        "--server": "127.0.0.1:8000",
        "--data": "{s}/client",
        "--ca": "{s}/dep/ca.crt",
        "--key": "{s}/dep/nodes/node-1.key",
    }
    args.update(dict(zip(override[::2], override[1::2], strict=True)))
    with pytest.raises(SystemExit) as info:
        client_main(["start", *[v.format(s=site) for kv in args.items() for v in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert len(err) == 1 and err[0].startswith("fedpriv-client: error:"), err
    assert needle.format(s=site) in err[0], err[0]
    assert started == []


def test_client_start_stores_the_nodes_budget_and_passes_it_on(site, tmp_path, monkeypatch):
    from fedpriv.client import node as client_node

    started: list = []
    monkeypatch.setattr(client_node, "run_node", lambda settings, on_line: started.append(settings))
    data = tmp_path / "client"
    shutil.copytree(site / "client", data)
    client_main(
        ["start", "--server", "127.0.0.1:8000", "--data", str(data), "--budget", "3",
         "--ca", str(site / "dep" / "ca.crt"), "--key", str(site / "dep" / "nodes" / "node-1.key")]
    )  # fmt: skip
    (settings,) = started
    assert settings.budget == 3.0
    args = client_node.node_args(settings)
    assert "privacy-budget=3.0" in args[args.index("--node-config") + 1]
    assert read_ledger(data).node_budget == 3.0


def _spent_folder(site: Path, tmp_path: Path) -> Path:
    data = tmp_path / "spent"
    shutil.copytree(site / "client", data)
    ledger = PrivacyLedger(node_budget=5.0)
    for run_id, rounds, sigma in ((111, (1, 2, 3), 1.1), (222, (1, 3), 0.9)):
        for rnd in rounds:
            ledger.record(
                run_id=run_id, server_round=rnd, noise_multiplier=sigma, sample_rate=0.25, steps=4
            )
    write_ledger(data, ledger)
    return data


def test_client_budget_shows_lifetime_and_per_run_spend(site, tmp_path, capsys):
    data = _spent_folder(site, tmp_path)
    ledger = read_ledger(data)
    client_main(["budget", "--data", str(data)])
    out = capsys.readouterr().out
    lifetime = ledger.epsilon(1e-5, "rdp")
    assert f"lifetime cumulative ε = {lifetime:.3f} over all 2 run(s)" in out
    assert "example-level, at δ=1e-05, rdp accountant" in out
    assert "node's own budget (--budget): ε = 5 over all runs" in out
    for run_id, summary in ((111, "3 round(s) (rounds 1-3), 12 steps"), (222, "rounds 1, 3")):
        alone = ledger.epsilon(1e-5, "rdp", run_id)
        assert alone < lifetime
        line = next(x for x in out.splitlines() if f"run {run_id}:" in x)
        assert summary in line and f"ε of this run alone = {alone:.3f}" in line, line
    client_main(["budget", "--data", str(data), "--delta", "1e-6", "--accountant", "prv"])
    out = capsys.readouterr().out
    assert f"= {ledger.epsilon(1e-6, 'prv'):.3f} over all 2" in out and "δ=1e-06, prv" in out


def test_client_budget_when_nothing_is_spent(site, capsys):
    client_main(["budget", "--data", str(site / "client")])
    out = capsys.readouterr().out
    assert "no privacy spent yet" in out and "none set" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["budget", "--data", "{s}/missing"], "data folder {s}/missing does not exist"),
        (["budget", "--data", "{s}/corrupt"], "{s}/corrupt/privacy-ledger.json is corrupt"),
        (["budget", "--data", "{s}/client", "--delta", "2"], "--delta must be in (0, 1)"),
        (["budget", "--data", "{s}/client", "--accountant", "gdp"], "unknown accountant"),
        (["check-data", "{s}/corrupt"], "{s}/corrupt/privacy-ledger.json is corrupt"),
    ],
)
def test_client_budget_and_check_data_refuse_in_one_line(site, args, needle, capsys):
    with pytest.raises(SystemExit) as info:
        client_main([a.format(s=site) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1
    assert len(err) == 1 and err[0].startswith("fedpriv-client: error:"), err
    assert needle.format(s=site) in err[0], err[0]
    assert (site / "corrupt" / "privacy-ledger.json").read_text() == "{truncated"


def test_check_data_reports_the_ledger(site, tmp_path, capsys):
    client_main(["check-data", str(_spent_folder(site, tmp_path))])
    out = capsys.readouterr().out
    assert "privacy ledger: 5 round(s) in 2 run(s) so far" in out
    assert "node's own budget ε = 5" in out
