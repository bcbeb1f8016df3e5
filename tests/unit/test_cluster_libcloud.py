"""The libcloud provider against libcloud's dummy driver (no real cloud is reachable here):
machines created with their boot script, listed and deleted by name, the site's other
machines left alone, orphans released by the reconciler, a boot that never registers
released, credentials never shown; and the refusals of `hubstack check`."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml
from libcloud.common.types import LibcloudError
from libcloud.compute.base import Node, NodeImage, NodeSize
from libcloud.compute.drivers.dummy import DummyNodeDriver
from libcloud.compute.providers import DRIVERS, set_driver

from hubstack.cli import main
from hubstack.cluster import cloud
from hubstack.cluster.apply import rows
from hubstack.cluster.nodes import Programs, SlurmNode
from hubstack.cluster.reconcile import Finding, reconcile
from hubstack.config.load import load
from hubstack.config.usage import Budget

SECRET = "dummy-secret-4f1c2a9e"
MUNGE_KEY = b"\x00munge-key\xff"
MUNGE_B64 = base64.b64encode(MUNGE_KEY).decode()
DOWN = "IDLE+CLOUD+POWERED_DOWN"


class NamingDummyDriver(DummyNodeDriver):
    """libcloud's dummy driver names every machine ``dummy-N`` and takes no boot script;
    real drivers keep the requested name and pass ``ex_userdata`` to the cloud, and so
    does this. The size ``Big`` fails as a cloud that quotes the request it refused."""

    def create_node(
        self, name: str, size: NodeSize, image: NodeImage, ex_userdata: str | None = None
    ) -> Node:
        if size.name == "Big":
            raise LibcloudError(f"AuthFailure: {self.creds} may not run {ex_userdata}")
        machine = super().create_node(name=name, size=size, image=image)
        machine.name = name
        machine.extra["user_data"] = ex_userdata
        return machine


if "hubstack_dummy" not in DRIVERS:
    set_driver("hubstack_dummy", __name__, "NamingDummyDriver")


class FakeScontrol:
    """slurmctld's view as data: the dummy driver's machines live in this test's process,
    where slurmctld cannot run the resume program (the real power-saving loop is tested
    with the local provider in tests/slurm/test_elastic.py)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.state = {name: SlurmNode(name, DOWN, name, "") for name in names}
        self.announced: dict[str, str] = {}

    def hostnames(self, hostlist: str) -> list[str]:
        return hostlist.split(",")

    def announce(self, node: str, address: str) -> None:
        self.announced[node] = address

    def set_down(self, node: str, reason: str) -> None:
        self.state[node] = SlurmNode(node, "DOWN+CLOUD+POWERED_DOWN", node, reason)

    def power_down(self, node: str) -> None:
        self.state[node] = SlurmNode(node, DOWN, node, "")

    def nodes(self, names: Iterable[str] | None = None) -> dict[str, SlurmNode]:
        return dict(self.state)


def write_config(directory: Path, **group: object) -> Path:
    (directory / "slurm.conf").write_text("ClusterName=cloudy\n")
    (directory / "munge.key").write_bytes(MUNGE_KEY)
    (directory / "creds").write_text(SECRET + "\n")
    libcloud = {
        "driver": "hubstack_dummy",
        "credentials": {"creds": {"file": str(directory / "creds")}},
        "size": "Small",
        "image": "Ubuntu 9.10",
        "munge_key": str(directory / "munge.key"),
    }
    data = {
        "hub": {"data_dir": str(directory / "data")},
        "cluster": {
            "slurm_conf": str(directory / "slurm.conf"),
            "node_groups": [
                {
                    "name": "vm",
                    "max_nodes": 2,
                    "cpus": 2,
                    "memory": "4G",
                    "partition": "cloud",
                    "provider": "libcloud",
                    "libcloud": libcloud,
                }
                | group
            ],
        },
    }
    path = directory / "hubstack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def programs(tmp_path: Path) -> Iterable[Programs]:
    config, _ = load(write_config(tmp_path))
    programs = Programs(config)
    programs.slurm = FakeScontrol(programs.groups)  # type: ignore[assignment]
    yield programs
    cloud._drivers.clear()


def driver(programs: Programs) -> DummyNodeDriver:
    return cloud._driver(programs.groups["vm1"].libcloud)  # type: ignore[arg-type]


def names(programs: Programs) -> list[str]:
    return sorted(machine.name for machine in driver(programs).list_nodes())


def test_a_node_is_a_named_machine_with_a_boot_script_and_is_deleted_by_name(
    programs: Programs,
) -> None:
    programs.cluster = programs.cluster.model_copy(update={"resume_timeout": 30})
    slurm = programs.slurm
    programs.slurm.nodes = lambda names=None: {  # type: ignore[method-assign]
        "vm1": SlurmNode("vm1", "IDLE+CLOUD", "127.0.0.3", "")
    }
    programs.resume("vm1")
    assert names(programs) == ["dummy-1", "dummy-2", "hubstack-vm1"]
    machine = next(m for m in driver(programs).list_nodes() if m.name == "hubstack-vm1")
    script = yaml.safe_load(machine.extra["user_data"])
    assert machine.extra["user_data"].startswith("#cloud-config\n")
    files = {f["path"]: f for f in script["write_files"]}
    key = files["/etc/munge/munge.key"]
    assert (base64.b64decode(key["content"]), key["permissions"]) == (MUNGE_KEY, "0400")
    assert files[str(programs.cluster.slurm_conf)]["content"] == "ClusterName=cloudy\n"
    assert ["/usr/sbin/slurmd", "-N", "vm1", "-f", str(programs.cluster.slurm_conf)] in script[
        "runcmd"
    ]
    assert slurm.announced == {"vm1": "127.0.0.3"}  # type: ignore[attr-defined]
    assert programs.records.read().nodes["vm1"].state == "up"
    programs.suspend("vm1")
    # The site's own machines (dummy-1, dummy-2) are never touched.
    assert names(programs) == ["dummy-1", "dummy-2"]


def test_the_reconciler_releases_an_orphan_and_leaves_other_machines(
    programs: Programs,
) -> None:
    size, image = driver(programs).list_sizes()[0], driver(programs).list_images()[0]
    driver(programs).create_node("hubstack-vm2", size, image)  # Slurm has vm2 powered down
    driver(programs).create_node("hubstack-other1", size, image)  # not a node of ours
    assert reconcile(programs) == [
        Finding("vm2", "a machine runs while Slurm has the node powered down", "released it")
    ]
    assert names(programs) == ["dummy-1", "dummy-2", "hubstack-other1"]
    assert reconcile(programs) == []


def test_a_spent_budget_refuses_the_machine_until_the_budget_allows(
    programs: Programs,
) -> None:
    group = programs.groups["vm1"]
    programs.groups["vm1"] = group.model_copy(update={"budget": Budget(core_hours=0)})
    programs.resume("vm1")
    assert names(programs) == ["dummy-1", "dummy-2"], "no machine for a refused node"
    reason = "budget spent for node group vm: 0.00 of 0 core-hours; it resets "
    assert programs.slurm.state["vm1"].reason.startswith(f"hubstack: {reason}")  # type: ignore[attr-defined]
    assert programs.records.read().nodes["vm1"].state == "refused"
    assert reconcile(programs) == []
    programs.groups["vm1"] = group.model_copy(update={"budget": Budget(core_hours=1)})
    assert reconcile(programs) == [
        Finding("vm1", "refused for a spent budget", "returned it to service, powered down")
    ]
    assert programs.slurm.state["vm1"].state == DOWN  # type: ignore[attr-defined]


def test_a_boot_that_never_registers_is_reported_and_released(programs: Programs) -> None:
    with programs.records.change() as records:
        records.booting("vm1", "vm")
    size, image = driver(programs).list_sizes()[0], driver(programs).list_images()[0]
    driver(programs).create_node("hubstack-vm1", size, image)
    programs.resume_fail("vm1")  # slurmctld at ResumeTimeout
    assert names(programs) == ["dummy-1", "dummy-2"]
    record = programs.records.read().nodes["vm1"]
    assert (record.state, record.reason) == ("failed", "its slurmd did not register within 300 s")
    assert "did not register" in programs.slurm.state["vm1"].reason  # type: ignore[attr-defined]


def test_credentials_never_appear_in_errors_logs_or_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    config, _ = load(write_config(tmp_path))
    group = config.cluster.node_groups[0]
    refused = group.model_copy(
        update={"libcloud": group.libcloud.model_copy(update={"size": "Big"})}  # type: ignore[union-attr]
    )
    config.cluster.node_groups[0] = refused
    programs = Programs(config)
    programs.slurm = FakeScontrol(programs.groups)  # type: ignore[assignment]
    try:
        programs.resume("vm1")
    finally:
        cloud._drivers.clear()
    reason = programs.records.read().nodes["vm1"].reason or ""
    assert reason.startswith("could not create the node: hubstack_dummy: LibcloudError: "), reason
    assert "AuthFailure: *** may not run #cloud-config" in reason, reason
    assert "content: ***" in reason and MUNGE_B64 not in reason, reason
    assert programs.slurm.state["vm1"].reason.startswith("hubstack: could not create")  # type: ignore[attr-defined]
    path = str(tmp_path / "hubstack.yaml")
    assert main(["check", "--config", path]) == 0
    shown = capsys.readouterr()
    assert str(tmp_path / "creds") in shown.out
    status = rows(programs.groups, programs.slurm.nodes(), programs.records.read())
    assert status[0].status.startswith("failed (could not create the node: ")
    texts = [
        reason,
        shown.out,
        shown.err,
        caplog.text,
        repr(status),
        repr(reconcile(programs)),
        (tmp_path / "data/cluster/nodes.json").read_text(),
    ]
    assert not [text for text in texts if SECRET in text or MUNGE_B64 in text]


def hubstack_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`hubstack check`'s exit status and everything it printed."""
    status = main(["check", "--config", str(path)])
    shown = capsys.readouterr()
    return status, shown.out + shown.err


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (
            {"driver": "nimbus2"},
            [
                "cluster.node_groups[0].libcloud.driver",
                "'nimbus2'",
                "is not a libcloud compute driver; use one of",
                "azure_arm",
                "ec2",
                "gce",
                "openstack",
            ],
        ),
        (
            {"quota": 1},
            [
                "cluster.node_groups[0].max_nodes",
                "makes 2 dummy machines at most, more than its libcloud.quota of 1",
            ],
        ),
        (
            {"credentials": {"key": {"file": "/nonexistent/cloud-key"}}},
            [
                "cluster.node_groups[0].libcloud.credentials.key: cannot read "
                "/nonexistent/cloud-key: No such file or directory"
            ],
        ),
    ],
)
def test_hubstack_check_refuses_bad_cloud_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, object], words: list[str]
) -> None:
    path = write_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    cloud_settings = data["cluster"]["node_groups"][0]["libcloud"]
    cloud_settings |= {"driver": "dummy"} | change
    path.write_text(yaml.safe_dump(data))
    status, shown = hubstack_check(path, capsys)
    assert status != 0
    for word in words:
        assert word in shown, shown
    assert SECRET not in shown


def test_a_local_group_bigger_than_its_subnet_is_refused_by_hubstack_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, provider="local", libcloud=None, max_nodes=6)
    data = yaml.safe_load(path.read_text())
    data["cluster"]["local"] = {"subnet": "10.0.0.0/29"}
    path.write_text(yaml.safe_dump(data))
    status, shown = hubstack_check(path, capsys)
    assert status != 0
    assert "cluster.local.subnet" in shown
    assert "has room for 5 nodes, but the local node groups may have 6" in shown
