"""A real OpenLDAP server (Debian's slapd) for login tests: its own config, certificates
and database in a temporary folder, listening on a loopback port, with an organisation,
people with passwords and groups (groupOfNames and posixGroup).

The server can be stopped and started again on the same port with the same data, to test
a hub whose directory goes away and comes back.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from hubtest import free_port_block, wait_for

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
OPENSSL = Path("/usr/bin/openssl")
SCHEMAS = ("core", "cosine", "inetorgperson", "nis")
SUFFIX = "dc=hubstack,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
ROOT_DN = f"cn=admin,{SUFFIX}"

CONFIG = """\
{includes}
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
TLSCACertificateFile {root}/ca.pem
TLSCertificateFile {root}/server.pem
TLSCertificateKeyFile {root}/server.key

database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_password}
directory {root}/db
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
"""


def person_dn(uid: str) -> str:
    return f"uid={uid},{PEOPLE}"


def group_dn(name: str) -> str:
    return f"cn={name},{GROUPS}"


@dataclass
class Slapd:
    """One slapd with ``people`` (uid -> password) and ``groups`` (name -> member uids;
    a name in ``posix_groups`` is a posixGroup with memberUid, others groupOfNames)."""

    root: Path
    people: dict[str, str]
    groups: dict[str, list[str]]
    posix_groups: tuple[str, ...] = ()
    service_password: str = "service-secret-5d1c"
    root_password: str = "root-secret-77a0"
    port: int = field(default_factory=lambda: free_port_block(1))
    ssl_port: int = field(default_factory=lambda: free_port_block(1))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ssl_uri(self) -> str:
        return f"ldaps://127.0.0.1:{self.ssl_port}"

    @property
    def ca_file(self) -> Path:
        return self.root / "ca.pem"

    @property
    def service_dn(self) -> str:
        """An account that may search the directory, as a hub's search account does."""
        return f"cn=hub,{SUFFIX}"

    def search_settings(self, password_file: Path) -> dict[str, Any]:
        """The ``auth.ldap`` keys of a hub that finds people here with the search account
        (its password in ``password_file``), over StartTLS."""
        return {
            "server": self.uri,
            "tls": "starttls",
            "ca_file": str(self.ca_file),
            "user_search_base": PEOPLE,
            "search_bind_dn": self.service_dn,
            "search_bind_password": {"file": str(password_file)},
        }

    def create(self) -> Slapd:
        (self.root / "db").mkdir(parents=True)
        self._certificates()
        includes = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in SCHEMAS)
        (self.root / "slapd.conf").write_text(
            CONFIG.format(
                includes=includes,
                root=self.root,
                suffix=SUFFIX,
                root_dn=ROOT_DN,
                root_password=self.root_password,
            )
        )
        (self.root / "data.ldif").write_text(self._ldif())
        subprocess.run(
            [SLAPADD, "-f", self.root / "slapd.conf", "-l", self.root / "data.ldif"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        return self

    def _certificates(self) -> None:
        """A CA and a certificate for 127.0.0.1 (only: not for localhost) signed by it, for
        StartTLS and ldaps."""

        def openssl(*args: str | Path) -> None:
            subprocess.run([OPENSSL, *args], check=True, capture_output=True, timeout=60)

        r = self.root
        openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=hubstack test CA", "-keyout", r / "ca.key", "-out", r / "ca.pem",
        )  # fmt: skip
        openssl(
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", r / "server.key", "-out", r / "server.csr",
        )  # fmt: skip
        (r / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl(
            "x509", "-req", "-in", r / "server.csr", "-CA", r / "ca.pem", "-CAkey", r / "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", r / "san.ext", "-out", r / "server.pem",
        )  # fmt: skip

    def _ldif(self) -> str:
        entries = [
            f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
            "o: hubstack test\ndc: hubstack",
            f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
            f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
            f"dn: {self.service_dn}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: hub\nuserPassword: {self.service_password}",
        ]
        for number, (uid, password) in enumerate(self.people.items()):
            entries.append(
                f"dn: {person_dn(uid)}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                f"uid: {uid}\ncn: {uid}\nsn: {uid}\nuidNumber: {60000 + number}\n"
                f"gidNumber: 60000\nhomeDirectory: /nonexistent\nuserPassword: {password}"
            )
        for number, (name, members) in enumerate(self.groups.items()):
            if name in self.posix_groups:
                lines = ["objectClass: posixGroup", f"gidNumber: {61000 + number}"]
                lines += [f"memberUid: {uid}" for uid in members]
            else:
                lines = ["objectClass: groupOfNames"]
                lines += [f"member: {person_dn(uid)}" for uid in members]
            entries.append("\n".join([f"dn: {group_dn(name)}", f"cn: {name}", *lines]))
        return "\n\n".join(entries) + "\n"

    def start(self) -> Slapd:
        log = (self.root / "slapd.log").open("ab")
        # -d keeps slapd in the foreground, so that this process owns it.
        self.proc = subprocess.Popen(
            [
                SLAPD,
                "-f",
                self.root / "slapd.conf",
                "-h",
                f"{self.uri}/ {self.ssl_uri}/",
                "-d",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, 30, f"slapd on {self.uri} (log: {self.root / 'slapd.log'})")
        return self

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"slapd exited with {self.proc.returncode}")
        with self.admin() as conn:
            return bool(conn.bound)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @contextlib.contextmanager
    def admin(self) -> Iterator[ldap3.Connection]:
        """A connection bound as the directory's root, to change entries."""
        server = ldap3.Server("127.0.0.1", port=self.port, connect_timeout=5)
        conn = ldap3.Connection(server, ROOT_DN, self.root_password, auto_bind=True)
        try:
            yield conn
        finally:
            conn.unbind()

    def remove_member(self, group: str, uid: str) -> None:
        """Take ``uid`` out of the groupOfNames ``group``."""
        with self.admin() as conn:
            changes = {"member": [(ldap3.MODIFY_DELETE, [person_dn(uid)])]}
            assert conn.modify(group_dn(group), changes), conn.result


@contextlib.contextmanager
def running_slapd(root: Path, **directory: object) -> Iterator[Slapd]:
    """A started slapd with the given people and groups, stopped and removed afterwards."""
    slapd = Slapd(root, **directory).create()  # type: ignore[arg-type]
    try:
        yield slapd.start()
    finally:
        slapd.stop()
        shutil.rmtree(root, ignore_errors=True)
