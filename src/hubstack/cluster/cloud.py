"""Cloud machines through Apache libcloud: the ``libcloud`` provider.

libcloud gives one interface to AWS, Azure, GCP, OpenStack and forty more, so hubstack
creates, deletes and lists machines through it and speaks no cloud API itself. A machine
is named ``name_prefix`` + its Slurm node name; listing and deleting look only at those
names, so the site's other machines on the same account are never touched. Credentials
are read from files (or the environment) when a driver is made and never printed: an
error from the cloud is passed on with any credential in it masked.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hubstack.cluster.slurmconf import INCLUDE_NAME
from hubstack.cluster.userdata import boot_script
from hubstack.config.cluster import ClusterSettings, LibcloudNodes, NodeGroup
from hubstack.config.secrets import SecretMissing
from hubstack.system import SystemOpError

if TYPE_CHECKING:
    from collections.abc import Callable

    from libcloud.compute.base import Node, NodeDriver

_ADDRESS_POLL_S = 5.0
_MASK = "***"
# One driver per account in a process: one connection, and libcloud's dummy driver keeps
# its machines in the driver object.
_drivers: dict[str, NodeDriver] = {}


def _secrets(settings: LibcloudNodes) -> dict[str, str]:
    try:
        return {name: source.read() for name, source in settings.credentials.items()}
    except SecretMissing as exc:
        raise SystemOpError(f"libcloud credentials: {exc}") from None


def _driver(settings: LibcloudNodes) -> NodeDriver:
    from libcloud.compute.providers import get_driver

    key = settings.model_dump_json()
    if key not in _drivers:
        driver_class = get_driver(settings.driver)
        _drivers[key] = driver_class(**_secrets(settings), **settings.driver_args)
    return _drivers[key]


def _masked(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def _pick(found: Iterable[Any], wanted: str, what: str) -> Any:
    """The size, image or location whose id or name is ``wanted``."""
    for item in found:
        if wanted in (str(item.id), item.name):
            return item
    raise SystemOpError(f"the cloud has no {what} {wanted!r}")


def _image(driver: NodeDriver, wanted: str) -> Any:
    """The image by id through the driver's own lookup where it has one (a cloud's full
    image list runs to many thousands), else by id or name from the list."""
    try:
        return driver.get_image(wanted)
    except NotImplementedError:
        return _pick(driver.list_images(), wanted, "image")


class LibcloudProvider:
    """One node group's machines on one cloud account."""

    def __init__(self, cluster: ClusterSettings, group: NodeGroup) -> None:
        assert group.libcloud is not None
        self.cluster = cluster
        self.group = group
        self.settings = group.libcloud

    def _call(self, action: Callable[[NodeDriver], Any]) -> Any:
        """``action`` with the driver; any failure as a SystemOpError without credentials
        (a cloud's error may quote the key it refused)."""
        try:
            return action(_driver(self.settings))
        except SystemOpError:
            raise
        except Exception as exc:  # libcloud raises its drivers' own types
            message = _masked(f"{type(exc).__name__}: {exc}", self._hidden())
            raise SystemOpError(f"{self.settings.driver}: {message}") from None

    def _hidden(self) -> list[str]:
        """What an error must not repeat: the credentials, and the munge key as the boot
        script carries it (a cloud may quote a request it refused)."""
        hidden = list(_secrets(self.settings).values())
        with contextlib.suppress(OSError):
            hidden.append(base64.b64encode(self.settings.munge_key.read_bytes()).decode())
        return hidden

    def _ours(self, driver: NodeDriver) -> dict[str, Node]:
        from libcloud.compute.types import NodeState

        names = {self.settings.name_prefix + node: node for node in self.group.nodes()}
        return {
            names[machine.name]: machine
            for machine in driver.list_nodes()
            if machine.name in names and machine.state != NodeState.TERMINATED
        }

    def create(self, node: str, group: NodeGroup, announce: Callable[[str], None]) -> str:
        address = self._call(lambda driver: self._create(driver, node))
        announce(address)
        return address

    def _create(self, driver: NodeDriver, node: str) -> str:
        s = self.settings
        args: dict[str, Any] = dict(s.extra)
        if s.location is not None:
            args["location"] = _pick(driver.list_locations(), s.location, "location")
        if s.user_data_arg is not None:
            args[s.user_data_arg] = self._boot_script(node)
        machine = driver.create_node(
            name=s.name_prefix + node,
            size=_pick(driver.list_sizes(), s.size, "size"),
            image=_image(driver, s.image),
            **args,
        )
        return self._address(driver, node, machine.id)

    def _boot_script(self, node: str) -> str:
        conf = self.cluster.slurm_conf
        include = conf.parent / INCLUDE_NAME
        files = {path: path.read_text() for path in (conf, include) if path.exists()}
        return boot_script(node, self.settings.munge_key.read_bytes(), files, conf)

    def _address(self, driver: NodeDriver, node: str, machine_id: str) -> str:
        """The machine's private address (slurmctld's network), else its public one, once
        the cloud has given it one. Not libcloud's wait_until_running: that waits for one
        kind of address chosen beforehand."""
        deadline = time.monotonic() + self.cluster.resume_timeout
        while time.monotonic() < deadline:
            machine = next((m for m in driver.list_nodes() if m.id == machine_id), None)
            if machine is not None and (ips := machine.private_ips or machine.public_ips):
                return ips[0]
            time.sleep(_ADDRESS_POLL_S)
        raise SystemOpError(f"machine {self.settings.name_prefix}{node} got no address")

    def delete(self, node: str) -> None:
        def destroy(driver: NodeDriver) -> None:
            if (machine := self._ours(driver).get(node)) is not None:
                driver.destroy_node(machine)

        self._call(destroy)

    def machines(self) -> dict[str, str]:
        def listed(driver: NodeDriver) -> dict[str, str]:
            return {
                node: next(iter(m.private_ips or m.public_ips), "?")
                for node, m in self._ours(driver).items()
            }

        return self._call(listed)
