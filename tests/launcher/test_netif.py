"""gloo's interface: the one that routes to the master, not the hostname's address.

The defect, reproducible on this machine: its hostname resolves to 127.0.0.1 (as Debian's
/etc/hosts maps it to 127.0.1.1), so gloo left to itself binds to loopback even when
MASTER_ADDR is the machine's network address; on a multi-node job the other nodes would be
told to connect to 127.0.0.1 and the side group would hang.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from portutil import free_port

from launcher import netif

REPO = Path(__file__).resolve().parents[2]


def _network_address() -> tuple[str, str] | None:
    for name, addr in netif.interface_addresses().items():
        if not addr.startswith("127."):
            return name, addr
    return None


def test_loopback_and_every_interface_address_route_to_their_own_interface():
    addrs = netif.interface_addresses()
    assert addrs.get("lo") == "127.0.0.1"
    for name, addr in addrs.items():
        assert netif.interface_toward(addr) == name, (name, addr)
    assert netif.interface_toward("no-such-host.invalid") is None


def test_user_setting_wins_and_single_node_loopback_stays_on_lo():
    env = {"GLOO_SOCKET_IFNAME": "ib0"}
    assert "ib0 (GLOO_SOCKET_IFNAME)" in netif.choose_gloo_interface("127.0.0.1", 8, env)
    assert env == {"GLOO_SOCKET_IFNAME": "ib0"}
    env = {}
    assert netif.choose_gloo_interface("127.0.0.1", 1, env) == "gloo on lo (route to 127.0.0.1)"
    assert env == {"GLOO_SOCKET_IFNAME": "lo"}
    env = {}
    assert "does not resolve" in netif.choose_gloo_interface("no-such-host.invalid", 2, env)
    assert env == {}


def test_master_resolving_to_loopback_on_a_multi_node_job_takes_the_default_route(tmp_path):
    table = tmp_path / "route"
    table.write_text("Iface\tDestination\tGateway\tFlags\n"
                     "ib0\t0000A8C0\t00000000\t0001\n"
                     "eno1\t00000000\t0102A8C0\t0003\n")
    assert netif.default_route_interface(str(table)) == "eno1"
    assert netif.default_route_interface(str(tmp_path / "missing")) is None
    default = netif.default_route_interface()
    env = {}
    line = netif.choose_gloo_interface("127.0.0.1", 2, env)
    if default is None:
        assert "no default route" in line and env == {}
    else:
        assert env == {"GLOO_SOCKET_IFNAME": default} and "resolves to loopback" in line


_RANK = r"""
import json, os, sys, datetime
import psutil, torch, torch.distributed as dist
from launcher.netif import choose_gloo_interface
rank, addr, port, choose = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
line = choose_gloo_interface(addr, 1) if choose else "gloo left alone"
store = dist.TCPStore(addr, port, 2, is_master=rank == 0, timeout=datetime.timedelta(seconds=120))
dist.init_process_group("gloo", store=store, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=120))
t = torch.ones(1)
dist.all_reduce(t)
local = sorted({c.laddr.ip.removeprefix("::ffff:") for c in psutil.Process().net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port != port})
print(json.dumps({"sum": t.item(), "gloo_local": local, "line": line}), flush=True)
dist.barrier()
os._exit(0)
"""


def _run_pair(addr: str, choose: bool) -> list[dict]:
    port = free_port(addr)
    env = {k: v for k, v in os.environ.items() if k != "GLOO_SOCKET_IFNAME"}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), addr, str(port), "1" if choose else "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return outs


def test_gloo_group_binds_the_interface_that_reaches_the_master():
    """MASTER_ADDR is the machine's network address: every gloo connection must use it, so
    a peer on another node could connect back."""
    found = _network_address()
    if found is None:
        pytest.skip("no non-loopback IPv4 interface on this machine")
    name, addr = found
    for out in _run_pair(addr, choose=True):
        assert out["sum"] == 2.0
        assert out["line"] == f"gloo on {name} (route to {addr})"
        assert out["gloo_local"] == [addr], out
