"""Passwordless ssh between namespace hosts (tests/distributed/hosts.py), set up as a cluster's
admin sets it up, so that ``ssh node2 hostname`` on node1 answers without a prompt.

    with HostNet(2) as net, passwordless_ssh(net.hosts, tmp_path / "ssh"):
        net.hosts[0].run(["ssh", "node2", "hostname"])   # -> node2

Every host runs its own OpenSSH server: ``/usr/sbin/sshd -D`` as a child of the caller, with its
own host key and a config file of the caller's own, listening on port 22 at the host's address
and at ``127.0.1.1`` (its own name, from node1 ``pdsh -w node1,node2`` also ssh's to itself). One
client key, made here, is the only authorized key. The client side is each host's own
``/etc/ssh/ssh_config`` (:meth:`Host.etc`): that key, a known_hosts with every host's key
(checked strictly), no prompts. A per-host /etc/ssh, not ``ssh -F`` or ``PDSH_SSH_ARGS_APPEND``,
because every ssh a launcher runs must see it: DeepSpeed's pre-check runs a plain ``ssh
-o PasswordAuthentication=no node1 hostname``, and OpenSSH reads ``~/.ssh`` from the passwd entry,
not ``$HOME``. Nothing is written to the machine's /etc/ssh or ~/.ssh; keys and configs live in
``folder``. The one trace on the machine: sshd's privilege-separation folder ``/run/sshd`` (empty,
root's, what the package's service makes at boot) is made when missing and left, since another
sshd may be using it by then.

On exit every sshd is stopped by its pid (SIGTERM, then SIGKILL); sessions still running under
them die with the hosts (:meth:`HostNet.close`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.distributed.hosts import Host

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be started by its absolute path
PRIVSEP = Path("/run/sshd")


def unavailable() -> str | None:
    """Why passwordless ssh between namespace hosts cannot be set up here (one line), or None."""
    for tool, package in (("ssh", "openssh-client"), ("ssh-keygen", "openssh-client"), ("pdsh", "pdsh")):
        if shutil.which(tool) is None:
            return f"ssh between hosts needs `{tool}` (Debian: {package})"
    if not SSHD.is_file():
        return f"ssh between hosts needs {SSHD} (Debian: openssh-server)"
    if not Path("/etc/ssh").is_dir():  # a host's own /etc/ssh is bound over it
        return "ssh between hosts needs /etc/ssh to exist (Debian: openssh-client)"
    return None


def _keygen(path: Path) -> list[str]:
    """A new ed25519 key pair at ``path`` (+ ``.pub``); its public line's type and key."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True, timeout=30)
    return Path(f"{path}.pub").read_text().split()[:2]


def _server_config(host: Host, host_key: Path, authorized: Path) -> str:
    return "\n".join([
        "Port 22",
        f"ListenAddress {host.address}",
        "ListenAddress 127.0.1.1",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",  # the keys live under /tmp, which is world-writable (sticky)
        "PidFile none",
        "LogLevel ERROR",
        "",
    ])


def _client_config(key: Path, known_hosts: Path) -> str:
    return "\n".join([
        "Host *",
        f"    IdentityFile {key}",
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {known_hosts}",
        "    GlobalKnownHostsFile /dev/null",
        "    StrictHostKeyChecking yes",
        "    BatchMode yes",
        "    ConnectTimeout 10",
        "",
    ])


@contextlib.contextmanager
def passwordless_ssh(hosts: Sequence[Host], folder: Path, ready_s: float = 30.0) -> Iterator[None]:
    """sshd on every host and ssh between all of them (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    client_key = folder / "id_ed25519"
    _keygen(client_key)
    authorized = folder / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    known_hosts = folder / "known_hosts"
    known, configs = [], []
    for host in hosts:
        own = folder / host.hostname
        own.mkdir(exist_ok=True)
        host_key = own / "ssh_host_ed25519_key"
        public = _keygen(host_key)
        known.append(f"{host.hostname},{host.address} {public[0]} {public[1]}\n")
        config = own / "sshd_config"
        config.write_text(_server_config(host, host_key, authorized))
        configs.append(config)
    known_hosts.write_text("".join(known))
    for host in hosts:
        (host.etc("ssh") / "ssh_config").write_text(_client_config(client_key, known_hosts))
    PRIVSEP.mkdir(mode=0o755, exist_ok=True)

    servers: list[subprocess.Popen] = []
    try:
        for host, config in zip(hosts, configs):
            log = open(folder / f"{host.hostname}.sshd.log", "w")  # noqa: SIM115
            servers.append(host.popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=log,
                                      stderr=subprocess.STDOUT))
            log.close()
        _wait_until_reachable(hosts, folder, servers, ready_s)
        yield
    finally:
        for server in servers:
            if server.poll() is None:
                server.terminate()
        for server in servers:
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)


def _wait_until_reachable(hosts: Sequence[Host], folder: Path, servers: list[subprocess.Popen],
                          ready_s: float) -> None:
    """Until the first host reaches every host (itself included) by name, as a launcher there will."""
    deadline = time.monotonic() + ready_s
    for host in hosts:
        while True:
            done = hosts[0].run(["ssh", host.hostname, "hostname"], timeout=30, capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip() == host.hostname:
                break
            dead = [s for s in servers if s.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "".join((folder / f"{h.hostname}.sshd.log").read_text() for h in hosts)
                raise RuntimeError(f"ssh {hosts[0].hostname} -> {host.hostname} failed: "
                                   f"{done.stderr.strip()}; sshd logs: {logs.strip()}")
            time.sleep(0.2)
