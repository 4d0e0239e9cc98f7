"""Real hosts on one machine: network namespaces joined by veth pairs to one bridge.

Each host has its own network stack (its own ``eth0`` with an address on a private /24, its own
loopback), its own hostname (a UTS namespace per process) and its own ``/etc/hosts``, written the
Debian way: the host's own name resolves to ``127.0.1.1`` and the other hosts' names to their
addresses, as a DNS server would answer. That is the set-up on which a multi-node launch meets
what it meets on real machines: a hostname that resolves to a loopback address, an interface to
pick, peers that are only reachable through the bridge.

    with HostNet(2, rate_mbit=1000) as net:
        node1, node2 = net.hosts
        server = node1.popen([sys.executable, "-m", "http.server"])
        node2.run(["curl", f"http://{node1.address}:8000"])

Everything is torn down on exit, also when the body raises: every process started in a host
(tracked, plus whatever else still lives in the namespace, which can only be ours), the veths,
the bridge, the namespaces and their ``/etc/netns`` files (the hosts file and any folder of the
host's own /etc, :meth:`Host.etc`). Namespaces of an earlier test process
that died without tearing down (SIGKILL) are removed when the next one starts. Needs root and
``ip``; :func:`unavailable` says in one line why not, for a skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "sqh"  # every namespace, veth and bridge this module makes starts with it (then the owner's pid)
SUBNET = "10.77.27"  # a private /24 that lives only inside the namespaces (the root namespace gets no address)
NETNS_ETC = Path("/etc/netns")


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespace hosts cannot be made here (one line), or None when they can."""
    if os.geteuid() != 0:
        return "namespace hosts need root (ip netns, veth, bridge)"
    for tool in ("ip", "unshare", "tc"):
        if shutil.which(tool) is None:
            return f"namespace hosts need `{tool}` (Debian: iproute2 / util-linux)"
    probe = f"{PREFIX}{os.getpid()}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip() or made.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Host:
    """One host: a namespace ``netns`` named ``hostname`` at ``address``, linked by ``veth``."""

    index: int  # 1-based
    hostname: str
    netns: str
    address: str
    veth: str  # the root namespace's end of its link (the host's end is its eth0)
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host: its network namespace (and /etc/hosts), its hostname."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` on this host in a session of its own (so its whole tree can be signalled)."""
        process = subprocess.Popen(self.command(argv), start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def run(self, argv: Sequence[str], timeout: float = 120, capture_output: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess:
        if capture_output:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        process = self.popen(argv, **kwargs)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal_all(signal.SIGKILL)
            out, err = process.communicate()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def etc(self, name: str) -> Path:
        """This host's own ``/etc/<name>``: a folder that everything started on the host from now on
        sees at ``/etc/<name>`` instead of the machine's (``ip netns exec`` binds it over; the
        machine's ``/etc/<name>`` must exist to be covered), removed with the host."""
        folder = NETNS_ETC / self.netns / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def pids(self) -> list[int]:
        """Every process living in this host's network namespace (all started by us: we made it)."""
        listed = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in listed.stdout.split()]

    def signal_all(self, sig: int) -> None:
        """Send ``sig`` to every process on this host."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def shape(self, rate_mbit: float, latency_ms: float = 50.0) -> None:
        """A token bucket on both directions of this host's link: ``rate_mbit`` Mbit/s each way."""
        burst = max(int(rate_mbit * 1e6 / 8 / 250), 16 * 1024)  # >= one timer tick's worth at 250 Hz
        spec = ["root", "tbf", "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", f"{latency_ms}ms"]
        subprocess.run(["tc", "qdisc", "replace", "dev", self.veth, *spec], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.netns, "tc", "qdisc", "replace", "dev", "eth0", *spec],
                       check=True, capture_output=True)

    def disconnect(self) -> None:
        """Pull this host's cable: its link goes down (processes keep running until killed)."""
        _ip("link", "set", self.veth, "down")

    def reconnect(self) -> None:
        _ip("link", "set", self.veth, "up")

    def lose(self) -> None:
        """The host is gone: the link down, then every process SIGKILLed (so no peer hears a
        connection close: as for a machine that lost power)."""
        self.disconnect()
        self.signal_all(signal.SIGKILL)

    def stop(self, grace: float = 5.0) -> None:
        """End what runs here: SIGTERM to our process groups, then SIGKILL to all that remain."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(0.1)
        for _ in range(20):  # processes may fork while we look; kill until none is left
            if not self.pids():
                break
            self.signal_all(signal.SIGKILL)
            time.sleep(0.1)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)


class HostNet:
    """``n`` hosts ``node1`` .. ``node<n>`` at ``10.77.27.11`` .., on one bridge (see the module
    docstring); ``rate_mbit`` shapes every link."""

    def __init__(self, n: int, rate_mbit: float | None = None, hostname: str = "node") -> None:
        if not 1 <= n <= 80:
            raise ValueError(f"1..80 hosts, got {n}")
        self.tag = f"{PREFIX}{os.getpid()}x"  # x ends the pid: tag 12 never matches 123
        self.bridge = f"{self.tag}br"
        self.n, self.rate_mbit = n, rate_mbit
        self.hosts = [
            Host(i, f"{hostname}{i}", f"{self.tag}n{i}", f"{SUBNET}.{10 + i}", f"{self.tag}v{i}")
            for i in range(1, n + 1)
        ]

    def __enter__(self) -> HostNet:
        remove_stale()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for host in self.hosts:
            _ip("netns", "add", host.netns)
            peer = f"{self.tag}p{host.index}"
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", peer)
            _ip("link", "set", peer, "netns", host.netns)
            _ip("link", "set", host.veth, "master", self.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("link", "set", peer, "name", "eth0", netns=host.netns)
            _ip("addr", "add", f"{host.address}/24", "dev", "eth0", netns=host.netns)
            _ip("link", "set", "eth0", "up", netns=host.netns)
            _ip("link", "set", "lo", "up", netns=host.netns)
            # `ip netns exec` bind-mounts /etc/netns/<name>/hosts over /etc/hosts
            etc = NETNS_ETC / host.netns
            etc.mkdir(parents=True, exist_ok=True)
            others = "".join(f"{h.address}\t{h.hostname}\n" for h in self.hosts if h is not host)
            (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.hostname}\n{others}")
            if self.rate_mbit:
                host.shape(self.rate_mbit)

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()
        _remove(self.tag)


def _remove(tag: str) -> None:
    """Delete every namespace, link and /etc/netns entry whose name starts with ``tag``."""
    for ns in _listed(["ip", "netns", "list"], tag):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
    for link in _listed(["ip", "-o", "link", "show"], tag, column=1):
        subprocess.run(["ip", "link", "del", link.split("@")[0]], capture_output=True)
    for entry in NETNS_ETC.glob(f"{tag}*") if NETNS_ETC.is_dir() else []:
        shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        NETNS_ETC.rmdir()  # only when empty: another user's entries stay


def _listed(command: list[str], tag: str, column: int = 0) -> list[str]:
    out = subprocess.run(command, capture_output=True, text=True).stdout
    names = [line.split()[column].rstrip(":") for line in out.splitlines() if len(line.split()) > column]
    return [name for name in names if name.startswith(tag)]


def remove_stale() -> None:
    """Remove the hosts of test processes that died without tearing them down."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        digits = name[len(PREFIX):].split("x")[0]
        if name.startswith(PREFIX) and digits.isdigit() and not Path(f"/proc/{digits}").exists():
            _remove(f"{PREFIX}{digits}x")


def leftovers(tag: str) -> list[str]:
    """Namespaces, links and /etc/netns entries of ``tag`` that still exist (for the tests)."""
    found = _listed(["ip", "netns", "list"], tag) + _listed(["ip", "-o", "link", "show"], tag, column=1)
    return found + ([str(p) for p in NETNS_ETC.glob(f"{tag}*")] if NETNS_ETC.is_dir() else [])
