"""Which network interface the ranks of a process group talk over.

gloo and NCCL pick their interface from the machine's hostname unless told otherwise, and on a
Debian-style host the hostname resolves to ``127.0.1.1`` (``/etc/hosts``): every rank then
advertises a loopback address, and a rank on another machine fails with ``Gloo connectFullMesh
failed ... Connection refused, remote=[127.0.x.1]``. The interface that matters is the one the
kernel routes to the master address through, which this module finds by asking the kernel (a UDP
``connect`` sends nothing; ``getsockname`` then names the source address of that route).

When the master address is a loopback address of this machine (the master's own node, where
``node1`` resolves to ``127.0.1.1``) and the job spans several nodes, the route says nothing
useful: the interface of the default route is taken, or the only non-loopback interface that is
up; with several candidates and no default route the user must name one.

The order of precedence: ``GLOO_SOCKET_IFNAME`` / ``NCCL_SOCKET_IFNAME`` already in the
environment, then ``engine.socket_ifname``, then the route.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address
IFNAME_VARS = {"gloo": "GLOO_SOCKET_IFNAME", "nccl": "NCCL_SOCKET_IFNAME"}


class InterfaceError(RuntimeError):
    """No interface can be chosen without the user's help."""


def route_source(address: str, port: int = 9) -> str:
    """The local address the kernel would send from to reach ``address`` (nothing is sent)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    infos = socket.getaddrinfo(address, port, family if ":" in address else socket.AF_UNSPEC, socket.SOCK_DGRAM)
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(sockaddr)
        return str(probe.getsockname()[0])


def interface_addresses() -> dict[str, list[str]]:
    """Every interface's IPv4 address (the primary one) and IPv6 addresses, by name."""
    found: dict[str, list[str]] = {}
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
                found.setdefault(name, []).append(socket.inet_ntoa(packed[20:24]))
            except OSError:  # no IPv4 address (or the interface is down)
                pass
    inet6 = Path("/proc/net/if_inet6")
    if inet6.is_file():
        for line in inet6.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6:
                found.setdefault(fields[5], []).append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    return found


def default_route_interface() -> str | None:
    """The interface of the IPv4 default route (/proc/net/route), if there is one."""
    table = Path("/proc/net/route")
    if not table.is_file():
        return None
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and fields[1] == "00000000" and fields[7] == "00000000":
            return fields[0]
    return None


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def routed_interface(master_addr: str, *, spans_nodes: bool) -> tuple[str, str]:
    """The interface to reach ``master_addr`` through, and why (its address, the rule that chose
    it); see the module docstring."""
    source = route_source(master_addr)
    addresses = interface_addresses()
    if not _is_loopback(source):
        for name, listed in addresses.items():
            if source in listed:
                return name, f"{source}, the route to MASTER_ADDR {master_addr}"
        raise InterfaceError(f"no interface holds {source}, the address that routes to MASTER_ADDR {master_addr}")
    loopback = next((n for n, listed in addresses.items() if any(_is_loopback(a) for a in listed)), "lo")
    if not spans_nodes:
        return loopback, f"MASTER_ADDR {master_addr} is this machine and all ranks are on it"
    outward = {n: listed for n, listed in addresses.items() if not any(_is_loopback(a) for a in listed)}
    outward = {n: [a for a in listed if not a.startswith("fe80")] or listed for n, listed in outward.items()}
    choice, rule = default_route_interface(), "the default route's"
    if choice is None and len(outward) == 1:
        choice, rule = next(iter(outward)), "the only non-loopback"
    if choice is None or choice not in outward:
        raise InterfaceError(
            f"MASTER_ADDR {master_addr} is a loopback address here and the job spans several nodes, but no "
            f"default route says which interface the other nodes reach this one through (candidates: "
            f"{', '.join(sorted(outward)) or 'none'}); set engine.socket_ifname or GLOO_SOCKET_IFNAME/NCCL_SOCKET_IFNAME"
        )
    return choice, (f"{outward[choice][0]}, {rule} interface: MASTER_ADDR {master_addr} is this machine, "
                    f"reached over the loopback (from {source}), which other nodes cannot reach")


def choose_interface(backend: str, master_addr: str, *, spans_nodes: bool, configured: str | None,
                     environ: dict[str, str]) -> tuple[str, str]:
    """(interface, why) for ``backend``: the user's environment variable, the config key, or the route."""
    variable = IFNAME_VARS.get(backend)
    if variable is not None and environ.get(variable):
        return environ[variable], f"from {variable}"
    if configured:
        return configured, "from engine.socket_ifname"
    return routed_interface(master_addr, spans_nodes=spans_nodes)
