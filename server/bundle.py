"""The Flower app bundle ``fedpriv-server start`` submits: names only, no code.

Flower runs what a run's app bundle (FAB) names in its
``[tool.flwr.app.components]``. fedpriv's bundle holds one ``pyproject.toml``
naming the installed deployed components, ``fedpriv.server.app:app`` and
``fedpriv.client.app:app``, and listing every run setting
(``[tool.flwr.app.config]``, so ``--run-config`` may set any of them): the
coordinator and the nodes run the fedpriv they have installed, and no
fedpriv source folder is needed to deploy.
"""

from __future__ import annotations

import json
from pathlib import Path

from fedpriv.shared_models.config import RunConfig
from fedpriv.shared_models.plumbing.atomic import atomic_write

SERVER_APP = "fedpriv.server.app:app"
CLIENT_APP = "fedpriv.client.app:app"
BUNDLE_DIR = "app"


def to_toml(settings: dict[str, bool | int | float | str]) -> str:
    """Flat settings as TOML key/value lines (what ``flwr run --run-config FILE`` reads)."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        else:
            text = json.dumps(value)  # a TOML basic string
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def bundle_pyproject(version: str) -> str:
    """The bundle's ``pyproject.toml``."""
    return (
        "# Written by fedpriv-server start: the deployed fedpriv components, installed on\n"
        "# the coordinator and on every node. No code travels in this bundle.\n"
        "[project]\n"
        'name = "fedpriv-deployment"\n'
        f'version = "{version}"\n'
        'description = "The deployed fedpriv ServerApp and ClientApp"\n'
        'license = "Apache-2.0"\n\n'
        "[tool.flwr.app]\n"
        'publisher = "fedpriv"\n\n'
        "[tool.flwr.app.components]\n"
        f'serverapp = "{SERVER_APP}"\n'
        f'clientapp = "{CLIENT_APP}"\n\n'
        "[tool.flwr.app.config]\n" + to_toml(RunConfig().to_run_config())
    )


def write_bundle(deployment: Path) -> Path:
    """Write the app bundle folder into ``deployment``; return it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        fedpriv_version = version("fedpriv")
    except PackageNotFoundError:  # pragma: no cover - running from an uninstalled tree
        fedpriv_version = "0.0.0"
    folder = deployment / BUNDLE_DIR
    folder.mkdir(exist_ok=True)
    atomic_write(folder / "pyproject.toml", bundle_pyproject(fedpriv_version))
    return folder
