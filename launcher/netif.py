"""Which network interface gloo should use: the one that reaches the master.

Without GLOO_SOCKET_IFNAME, gloo binds to whatever the node's hostname resolves to. Debian's
/etc/hosts maps the hostname to 127.0.1.1 (this CI machine maps it to 127.0.0.1), and
multi-NIC GPU nodes may resolve it to a network the other nodes cannot reach: gloo then
advertises an address its peers cannot connect to, and the group hangs until the timeout.
NCCL runs use gloo too (the host-value side group of delia_dist.distributed), so this
bites every multi-node job. The interface that holds the kernel's source address for a
packet to MASTER_ADDR reaches the master, whose address every rank rendezvoused at: that is
the interface to bind. The master itself may resolve its own name to loopback; on a
multi-node job it then takes the default route's interface, and says so.
"""
from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import MutableMapping
from typing import Optional

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's primary IPv4 address


def interface_addresses() -> dict[str, str]:
    """Interface name -> primary IPv4 address, for the interfaces that have one (Linux)."""
    out: dict[str, str] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name[:15].encode()))
            except OSError:  # down, or no IPv4 address
                continue
            out[name] = socket.inet_ntoa(packed[20:24])
    return out


def source_address(host: str) -> Optional[str]:
    """The local IPv4 address the kernel sends from to reach `host` (a UDP connect sends no
    packet); None when the host does not resolve or no route leads there."""
    try:
        target = socket.getaddrinfo(host, 9, socket.AF_INET, socket.SOCK_DGRAM)[0][4]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(target)
            return s.getsockname()[0]
    except OSError:
        return None


def default_route_interface(route_table: str = "/proc/net/route") -> Optional[str]:
    try:
        with open(route_table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "00000000":
                    return fields[0]
    except OSError:
        pass
    return None


def interface_holding(addr: Optional[str]) -> Optional[str]:
    """The interface whose primary IPv4 address is `addr`, or None."""
    return next((name for name, a in interface_addresses().items() if a == addr), None) if addr else None


def interface_toward(host: str) -> Optional[str]:
    """The interface that holds the source address toward `host`, or None."""
    return interface_holding(source_address(host))


def choose_gloo_interface(master_addr: str, num_nodes: int,
                          environ: MutableMapping[str, str] | None = None) -> str:
    """Set GLOO_SOCKET_IFNAME in `environ` (default os.environ) unless the user set it;
    returns how gloo will pick its address, for the rank's start-up line."""
    environ = os.environ if environ is None else environ
    if environ.get("GLOO_SOCKET_IFNAME"):
        return f"gloo on {environ['GLOO_SOCKET_IFNAME']} (GLOO_SOCKET_IFNAME)"
    src = source_address(master_addr)
    if src is None:
        return f"gloo on the hostname's address ({master_addr} does not resolve here)"
    if ipaddress.ip_address(src).is_loopback and num_nodes > 1:
        name = default_route_interface()
        if name is None:
            return (f"gloo on the hostname's address: {master_addr} is loopback here and there is no "
                    "default route; set GLOO_SOCKET_IFNAME if other nodes cannot reach it")
        environ["GLOO_SOCKET_IFNAME"] = name
        return (f"gloo on {name} (default route: {master_addr} resolves to loopback here; "
                "set GLOO_SOCKET_IFNAME if the nodes talk over another network)")
    name = interface_holding(src)
    if name is None:
        return f"gloo on the hostname's address (no interface holds {src}, the source toward {master_addr})"
    environ["GLOO_SOCKET_IFNAME"] = name
    return f"gloo on {name} (route to {master_addr})"


def interface_names() -> list[str]:
    """Every interface on this node, with or without an address."""
    return sorted(name for _, name in socket.if_nameindex())


def ifname_problem(var: str, value: str, names: Optional[list[str]] = None) -> Optional[str]:
    """Why the setting `var`=`value` names no interface on this node, or None if it does.
    NCCL_SOCKET_IFNAME is a comma list of prefixes ('=' first: exact names; '^' first: the
    ones to exclude); GLOO_SOCKET_IFNAME is a comma list of exact names, each of which must exist."""
    names = interface_names() if names is None else names
    here = f"this node has {', '.join(names)}"
    if not var.startswith("NCCL"):
        missing = [p for p in value.split(",") if p and p not in names]
        return f"{var}={value}: no interface {', '.join(missing)} ({here})" if missing else None
    body, exclude = (value[1:], True) if value.startswith("^") else (value, False)
    body, exact = (body[1:], True) if body.startswith("=") else (body, False)
    patterns = [p for p in body.split(",") if p]
    hits = [n for n in names if any(n == p if exact else n.startswith(p) for p in patterns)]
    if exclude and len(hits) == len(names):
        return f"{var}={value} excludes every interface ({here})"
    if not exclude and not hits:
        return f"{var}={value} matches no interface ({here})"
    return None
