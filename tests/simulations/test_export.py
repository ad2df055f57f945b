"""``fedpriv-sim export-demo-data``: a simulation dataset as the data folders of a deployment,
split exactly as the simulation splits it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedpriv.client.data import load_local_data
from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.data_folder import check_data
from fedpriv.shared_models.errors import ConfigError, DataError
from fedpriv.simulations.apps import load_client_data, load_partitions, model_config_for
from fedpriv.simulations.cli import main
from fedpriv.simulations.export import SERVER_TEST_FOLDER, export_partitions


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
    from fedpriv.simulations.text_data import DEFAULT_DATA_DIR, fetch_corpora

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


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


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


@pytest.mark.parametrize(
    "args",
    [["export-demo-data", "--clients", "three", "out"], ["export-demo-data", "--bogus", "out"]],
)
def test_cli_malformed_command_line(args: list[str], capsys) -> None:
    code, _, err = _run_main(args, capsys)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedpriv-sim export-demo-data: error: "), err
