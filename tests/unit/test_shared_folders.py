"""Shared folders as plain data: who sees which folder, the Unix group names, the config's
refusals, and the job script's links on Slurm (run by a real bash)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hubstack.config import ConfigError
from hubstack.config.load import validate
from hubstack.launch.slurm_fields import SlurmRequest
from hubstack.slurm.jobscript import JobScript, render_job_script, shared_links
from hubstack.system.accounts import MAX_NAME, unix_name
from hubstack.system.shared_folders import folders, grants, mount_base, unix_group

GROUPS = {
    "lab": {"shared": {"quota": "5G"}},
    "course": {"shared": {"quota": "1G"}},
    "quiet": {},  # a group without a shared folder
}


def config(**extra: Any) -> Any:
    return validate({"groups": GROUPS, **extra})


def test_members_read_champions_write_others_see_nothing() -> None:
    cfg = config(policy={"shared": {"everyone": {"quota": "1G"}}})
    assert grants(cfg, ["lab"], admin=False) == {"lab": False, "everyone": False}
    assert grants(cfg, ["lab-champions"], admin=False) == {"lab": True, "everyone": False}
    assert grants(cfg, ["lab", "lab-champions", "course"], admin=False) == {
        "lab": True,
        "course": False,
        "everyone": False,
    }
    assert grants(cfg, ["quiet", "unconfigured"], admin=True) == {"everyone": True}
    assert grants(config(), ["quiet"], admin=True) == {}, "no everyone folder unless configured"


def test_each_folder_has_its_quota_and_groups() -> None:
    found = folders(config(accounts={"prefix": "hs-"}))
    assert sorted(found) == ["course", "lab"]
    assert found["lab"].quota == 5 * 2**30
    assert (found["lab"].readers, found["lab"].writers) == ("hs-lab_r", "hs-lab_w")


@pytest.mark.parametrize("prefix", ["hs-", "a", "hub_", "x" * 24])
@pytest.mark.parametrize("group", ["lab", "a-b", "g" * 30, "everyone"])
def test_folder_groups_are_never_an_accounts_name(prefix: str, group: str) -> None:
    for role in ("r", "w"):
        name = unix_group(prefix, group, role)
        assert len(name) <= MAX_NAME and name.startswith(prefix) and name.endswith(f"_{role}")
        # Account names are prefix + a stem without "_": the folder's group has one after it.
        assert "_" in name[len(prefix) :]
        assert unix_name(name.removeprefix(prefix), prefix) != name


def test_long_group_names_stay_apart() -> None:
    one, two = unix_group("x" * 20, "g" * 29 + "a", "r"), unix_group("x" * 20, "g" * 29 + "b", "r")
    assert one != two and len(one) <= MAX_NAME


def test_folders_live_under_the_data_dir_a_configured_path_or_the_slurm_path() -> None:
    assert mount_base(config(hub={"data_dir": "/srv/hub"})) == Path("/srv/hub/shared")
    assert mount_base(config(policy={"shared": {"path": "/data/shared"}})) == Path("/data/shared")
    slurm = config(backend={"type": "slurm", "slurm": {"shared": {"groups": "/nfs/groups"}}})
    assert mount_base(slurm) == Path("/nfs/groups")


def test_slurm_needs_a_path_every_node_sees() -> None:
    with pytest.raises(ConfigError) as info:
        config(backend={"type": "slurm"})
    assert "backend.slurm.shared.groups" in str(info.value)
    assert "every node" in str(info.value) and "lab" in str(info.value)


def test_a_group_named_everyone_cannot_have_a_folder() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"groups": {"everyone": {"shared": {"quota": "1G"}}}})
    assert "groups.everyone.shared" in str(info.value)


def test_a_bad_quota_names_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        validate({"groups": {"lab": {"shared": {"quota": "lots"}}}})
    assert "groups.lab.shared.quota" in str(info.value)


def run_links(home: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``script`` as a job runs it: bash with set -eu, in the user's environment."""
    return subprocess.run(
        ["/bin/bash", "-c", f"set -eu\n{script}\necho done"],
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_job_links_granted_folders_and_drops_the_others(tmp_path: Path) -> None:
    base, home = tmp_path / "groups", tmp_path / "home"
    home.mkdir()
    first = run_links(home, shared_links(base, ["lab", "course"]))
    assert first.returncode == 0 and first.stdout.strip() == "done", first.stderr
    assert os.readlink(home / "shared/lab") == str(base / "lab")
    assert os.readlink(home / "shared/course") == str(base / "course")

    os.symlink("/elsewhere", home / "shared/mine")  # the user's own link stays
    second = run_links(home, shared_links(base, ["course"]))
    assert second.returncode == 0, second.stderr
    assert sorted(os.listdir(home / "shared")) == ["course", "mine"]

    third = run_links(home, shared_links(base, []))
    assert third.returncode == 0, third.stderr
    assert os.listdir(home / "shared") == ["mine"]


def test_something_in_the_way_is_reported_and_the_job_goes_on(tmp_path: Path) -> None:
    base, home = tmp_path / "groups", tmp_path / "home"
    (home / "shared/lab").mkdir(parents=True)
    ran = run_links(home, shared_links(base, ["lab"]))
    assert ran.returncode == 0 and ran.stdout.strip() == "done"
    assert "~/shared/lab is in the way" in ran.stderr
    assert (home / "shared/lab").is_dir() and not (home / "shared/lab").is_symlink()


def test_the_job_script_links_before_the_server_starts() -> None:
    job = JobScript(
        job_name="hs-alice-default",
        output="/home/hs-alice/.hubstack/jobs/default-%j.log",
        workdir="/home/hs-alice",
        request=SlurmRequest(
            partition=None,
            account=None,
            qos=None,
            reservation=None,
            walltime=3600,
            cores=1,
            memory=2**30,
            gpus=0,
            extras=(),
        ),
        prologue="",
        reporter="port=1",
        command=["/opt/env/bin/jupyterhub-singleuser"],
        shared=shared_links(Path("/nfs/groups"), ["lab"]),
    )
    script = render_job_script(None, job)
    assert script.index("ln -sT -- /nfs/groups/lab") < script.index("cd /home/hs-alice")
    custom = render_job_script("#!/bin/bash\n{{ shared }}\nexec {{ command }}\n", job)
    assert "/nfs/groups/lab" in custom
