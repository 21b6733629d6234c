"""A real Slurm cluster for the tests, started as root under a temp dir and torn down by PID.

Debian's slurm-wlm (22.05) and munge, with the test's own slurm.conf, munge socket and
ports, so nothing on the machine is reused or touched except: a bridge with two veth
pairs and two network namespaces (10.77.0.0/24, the test's own hosts n1/n2) and two
/etc/hosts lines for them, all removed again at stop().

Nodes:
- partition `local`: this machine itself (2 CPUs) — a 2-task job on one node;
- partition `pair`: n1 and n2 (1 CPU each), one slurmd per network + UTS namespace, so a
  2-node job really talks over an interface that a test can cut (`cut_node`).
"""
from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from portutil import free_port

BRIDGE, SUBNET, CTL_ADDR = "deliabr0", "10.77.0", "10.77.0.1"
NS_NODES = {"n1": f"{SUBNET}.11", "n2": f"{SUBNET}.12"}
HOSTS_MARK = "# delia-slurm-test"
LOCK = "/tmp/delia-slurm-test.lock"
# In the environment of every daemon and job a test cluster starts: a cluster whose test
# process was killed (no teardown) is found by it and cleared before the next one starts.
MARKER = "DELIA_SLURM_TEST_CLUSTER"


def unavailable_reason() -> str | None:
    """Why this machine cannot run the Slurm tests, or None."""
    if os.geteuid() != 0:
        return "needs root to start munged/slurmctld/slurmd and network namespaces"
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "ip", "nsenter", "unshare")
               if shutil.which(b) is None]
    if missing:
        return f"missing {', '.join(missing)} (install with scripts/install.sh --slurm)"
    return None


def _run(*cmd: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout, **kw)


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.ns_created: list[str] = []
        self.links_created: list[str] = []
        self.hosts_added = False
        self._lock_fd: int | None = None
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), MARKER: str(self.root)}

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> "SlurmCluster":
        # One test cluster per machine at a time: the bridge, addresses and hosts lines are global.
        self._lock_fd = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            self._clear_stale()
            self._write_conf()
            self._start_munge()
            self._network_up()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            self._wait(lambda: _run("scontrol", "ping", check=False, env=self.env).returncode == 0,
                       30, "slurmctld to answer")
            self._spawn("slurmd-local", ["slurmd", "-D", "-f", str(self.conf), "-N", self.hostname])
            for node in NS_NODES:
                self._spawn(f"slurmd-{node}", [
                    "nsenter", f"--net=/var/run/netns/delia-{node}", "unshare", "--uts", "sh", "-c",
                    f'hostname {node} && exec slurmd -D -f "$SLURM_CONF" -N {node}'])
            self._wait(lambda: self.idle_nodes() >= {self.hostname, *NS_NODES}, 60, "all nodes idle")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            _run("scancel", "--full", "--quiet", *self._job_ids(), check=False, env=self.env) \
                if self._job_ids() else None
            self._wait(lambda: not self._job_ids(), 20, "jobs to end", fail=False)
        for name in reversed(list(self.procs)):
            self._stop_proc(self.procs[name])
        self.procs.clear()
        self._kill_strays()
        self._network_down()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # -- what tests call ---------------------------------------------------------------
    def sbatch(self, *args: str, cwd: Path, env: dict | None = None) -> str:
        out = _run("sbatch", "--parsable", *args, cwd=cwd, env={**self.env, **(env or {})})
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, Reason, ...)."""
        out = _run("scontrol", "show", "job", "-o", job_id, check=False, env=self.env).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_job(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        info: dict[str, str] = {}

        def reached() -> bool:
            nonlocal info
            info = self.job(job_id)
            return info.get("JobState") in states
        self._wait(reached, timeout, f"job {job_id} to reach {sorted(states)}", detail=lambda: str(info))
        return info

    def scontrol(self, *args: str) -> str:
        return _run("scontrol", *args, env=self.env).stdout

    def scancel(self, *args: str) -> None:
        _run("scancel", *args, env=self.env)

    def idle_nodes(self) -> set[str]:
        out = _run("sinfo", "-h", "-N", "-o", "%N %t", check=False, env=self.env).stdout
        return {n for n, state in (l.split() for l in out.splitlines() if l.strip()) if state == "idle"}

    def cut_node(self, node: str) -> None:
        """Take node's link down: packets vanish (no reset), as when a switch port dies."""
        _run("ip", "link", "set", f"dveth-{node}", "down")

    def restore_node(self, node: str, timeout: float = 60) -> None:
        _run("ip", "link", "set", f"dveth-{node}", "up")
        # ReturnToService=2: the node comes back once its slurmd registers again.
        self._wait(lambda: node in self.idle_nodes() or self._resume(node), timeout, f"{node} idle again")

    def task_pids(self, job_id: str, procid: int = 1) -> list[int]:
        """PIDs of the job's training rank `procid` (python processes whose env names the job)."""
        pids = []
        for pid in _pids():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            # Not srun itself: its command line names the launcher too, and on the batch node
            # it carries SLURM_PROCID=0.
            if b"launcher" in cmd and not cmd[0].endswith(b"srun") \
                    and f"SLURM_JOB_ID={job_id}".encode() in env and f"SLURM_PROCID={procid}".encode() in env:
                pids.append(pid)
        return pids

    # -- internals ---------------------------------------------------------------------
    @property
    def hostname(self) -> str:
        return socket.gethostname()

    def _write_conf(self) -> None:
        r = self.root
        for d in ("state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        mem_mb = max(1024, int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.5))
        self.conf.write_text(f"""\
ClusterName=deliatest
SlurmctldHost={self.hostname}({CTL_ADDR})
SlurmctldPort={free_port("")}
SlurmdPort={free_port("")}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# A requeued job whose BeginTime passes starts at the next pass of the main loop (60 s).
SchedulerParameters=sched_interval=2
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
# Short timeouts so a cut-off node is noticed in seconds, not minutes.
SlurmdTimeout=10
MessageTimeout=5
KillWait=5
InactiveLimit=0
MinJobAge=600
NodeName={self.hostname} NodeAddr={CTL_ADDR} CPUs=2 RealMemory={mem_mb} State=UNKNOWN
NodeName=n1 NodeAddr={NS_NODES['n1']} CPUs=1 RealMemory=1024 State=UNKNOWN
NodeName=n2 NodeAddr={NS_NODES['n2']} CPUs=1 RealMemory=1024 State=UNKNOWN
PartitionName=local Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=pair Nodes=n1,n2 MaxTime=INFINITE State=UP
""")

    def _start_munge(self) -> None:
        r = self.root
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={r}/munge.sock",
                               f"--pid-file={r}/munged.pid", f"--log-file={r}/log/munged.log",
                               f"--seed-file={r}/munged.seed", "--key-file=/etc/munge/munge.key"])
        self._wait(lambda: _run("munge", "-n", f"--socket={r}/munge.sock", check=False).returncode == 0,
                   20, "munged")

    def _network_up(self) -> None:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        self.links_created.append(BRIDGE)
        _run("ip", "addr", "add", f"{CTL_ADDR}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        for node, addr in NS_NODES.items():
            ns, outer, inner = f"delia-{node}", f"dveth-{node}", f"iveth-{node}"
            _run("ip", "netns", "add", ns)
            self.ns_created.append(ns)
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self.links_created.append(outer)
            _run("ip", "link", "set", outer, "master", BRIDGE)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "link", "set", inner, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        lines = "".join(f"{addr} {node} {HOSTS_MARK}\n" for node, addr in NS_NODES.items())
        with open("/etc/hosts", "a") as f:
            f.write(lines)
        self.hosts_added = True

    def _network_down(self) -> None:
        for link in reversed(self.links_created):
            _run("ip", "link", "del", link, check=False)
        for ns in self.ns_created:
            _run("ip", "netns", "del", ns, check=False)
        self.links_created.clear()
        self.ns_created.clear()
        if self.hosts_added:
            hosts = Path("/etc/hosts")
            kept = [l for l in hosts.read_text().splitlines(keepends=True) if HOSTS_MARK not in l]
            hosts.write_text("".join(kept))
            self.hosts_added = False

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL)
        log.close()

    @staticmethod
    def _stop_proc(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def _kill_strays(self) -> None:
        """slurmstepd and job processes re-parent away from slurmd; ours carry our SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf}".encode()
        for pid in _pids():
            if pid == os.getpid():
                continue
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    def _clear_stale(self) -> None:
        """Holding the lock, anything of ours still around was left by a test process that
        was killed before its teardown: its daemons and jobs, links, namespaces, hosts lines."""
        marker = f"{MARKER}=".encode()
        for pid in _pids():
            try:
                if pid != os.getpid() and any(v.startswith(marker) for v in
                                              Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
        for link in (BRIDGE, *(f"dveth-{node}" for node in NS_NODES)):
            _run("ip", "link", "del", link, check=False)
        for node in NS_NODES:
            _run("ip", "netns", "del", f"delia-{node}", check=False)
        self.hosts_added = True
        self._network_down()

    def _job_ids(self) -> list[str]:
        out = _run("squeue", "-h", "-o", "%i", check=False, env=self.env).stdout
        return out.split()

    def _resume(self, node: str) -> bool:
        _run("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False, env=self.env)
        return False

    def _wait(self, cond, timeout: float, what: str, fail: bool = True, detail=None) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.5)
        if fail:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}"
                             for p in sorted((self.root / "log").glob("*")) if p.is_file())
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}"
                               f"{': ' + detail() if detail else ''}\n{logs}")
        return False


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]
