"""`hubstack` commands that only open the hub's database start without the hub's settings,
which import every authenticator and page of the hub: seconds of each command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ADD_USER = """
import json, sys
from hubstack.cli import main
code = main(["add-user", "cli-imports", "--config", sys.argv[1]])
print(json.dumps([code, "hubstack.hub.settings" in sys.modules, "oauthenticator" in sys.modules]))
"""


def test_add_user_does_not_import_the_hubs_settings(tmp_path: Path) -> None:
    config = tmp_path / "hubstack.yaml"
    config.write_text(yaml.safe_dump({"hub": {"data_dir": str(tmp_path / "data")}}))
    run = subprocess.run(
        [sys.executable, "-c", ADD_USER, str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.splitlines()[-1]) == [0, False, False]
