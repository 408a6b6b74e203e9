"""A fleet of three SSH 'boards', each a network namespace with its own sshd, run in parallel.

Board 1 is healthy; board 2 sits behind a tc tbf 8 Mbit link and a cgroup v1 CPU quota of 20 %
of one core; board 3's sshd (and everything under it) is killed mid-trial. A fourth test
blackholes a board's link mid-command to prove TCP_USER_TIMEOUT ends the wait. Needs root,
iproute2 (ip, tc) and openssh-server; skips with the actual error where the kernel says no.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from devices.inventory import SSHDevice
from devices.transports import open_transport
from devices.transports.base import TransportError
from devices.transports.ssh import SSHTransport
from devices.trial import TrialOutcome, TrialSpec, run_trial

try:
    import sshd as sshd_support
    from test_ssh_transport import onnx_classifier, reference_scores
except ImportError:  # tests/ imported as a package
    from tests import sshd as sshd_support
    from tests.test_ssh_transport import onnx_classifier, reference_scores

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
TAG = f"dq{os.getpid() % 100000}"  # unique names: parallel runs never share a namespace
OCTET = 100 + os.getpid() % 100


def sh(*argv: str) -> str:
    """Run a setup command; raise with its stderr (the skip reason) when it fails."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise OSError(f"`{' '.join(argv)}` failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


@dataclass
class Board:
    index: int
    ns: str
    host_if: str
    dev_if: str
    host_ip: str
    dev_ip: str
    server: sshd_support.SSHServer | None = None
    cgroup: Path | None = None


class Fleet:
    """Namespaces, veth pairs, qdiscs, cgroups and sshds; close() removes all of them."""

    def __init__(self, root: Path):
        self.root = root
        self.boards: list[Board] = []

    def add_board(self, i: int) -> Board:
        b = Board(
            i, f"{TAG}b{i}", f"{TAG}h{i}", f"{TAG}d{i}", f"10.{OCTET}.{i}.1", f"10.{OCTET}.{i}.2"
        )
        sh("ip", "netns", "add", b.ns)
        self.boards.append(b)
        sh("ip", "link", "add", b.host_if, "type", "veth", "peer", "name", b.dev_if)
        sh("ip", "link", "set", b.dev_if, "netns", b.ns)
        sh("ip", "addr", "add", f"{b.host_ip}/30", "dev", b.host_if)
        sh("ip", "link", "set", b.host_if, "up")
        sh("ip", "netns", "exec", b.ns, "ip", "addr", "add", f"{b.dev_ip}/30", "dev", b.dev_if)
        sh("ip", "netns", "exec", b.ns, "ip", "link", "set", b.dev_if, "up")
        sh("ip", "netns", "exec", b.ns, "ip", "link", "set", "lo", "up")
        return b

    def slow_link(self, b: Board) -> None:
        # Egress from the controller to the board: pushes crawl like over a weak Wi-Fi link.
        sh(
            "tc",
            "qdisc",
            "add",
            "dev",
            b.host_if,
            "root",
            "tbf",
            "rate",
            "8mbit",
            "burst",
            "32kbit",
            "latency",
            "400ms",
        )

    def cpu_quota(self, b: Board, quota_us: int, period_us: int = 100_000) -> None:
        if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
            raise OSError(
                f"cgroup v1 cpu controller not mounted at {CGROUP_CPU} (cpu.cfs_quota_us missing)"
            )
        b.cgroup = CGROUP_CPU / f"{TAG}b{b.index}"
        b.cgroup.mkdir()
        (b.cgroup / "cpu.cfs_period_us").write_text(str(period_us))
        (b.cgroup / "cpu.cfs_quota_us").write_text(str(quota_us))

    def start_sshd(self, b: Board) -> sshd_support.SSHServer:
        b.server = sshd_support.SSHServer(
            self.root / f"board{b.index}",
            host=b.dev_ip,
            port=22,
            netns=b.ns,
            cgroup_procs=b.cgroup / "cgroup.procs" if b.cgroup else None,
        ).start()
        return b.server

    def device(self, b: Board, **kw) -> SSHDevice:
        assert b.server is not None
        return SSHDevice(
            name=f"board{b.index}",
            transport="ssh",
            address=b.dev_ip,
            port=b.server.port,
            user=b.server.user,
            key_file=str(b.server.client_key),
            known_hosts=str(b.server.known_hosts),
            workdir=str(self.root / f"wd{b.index}"),
            python=sys.executable,
            connect_timeout_s=5.0,
            keepalive_s=1.0,
            runtimes=["onnxruntime-cpu"],
            **kw,
        )

    def close(self) -> None:
        for b in self.boards:
            if b.server is not None:
                b.server.kill()
            for argv in (("ip", "netns", "del", b.ns), ("ip", "link", "del", b.host_if)):
                try:
                    sh(*argv)
                except OSError:  # deleting the namespace usually takes the veth pair with it
                    pass
            if b.cgroup is not None and b.cgroup.exists():
                for pid in (b.cgroup / "cgroup.procs").read_text().split():
                    try:
                        (CGROUP_CPU / "cgroup.procs").write_text(pid)
                    except OSError:
                        pass
                b.cgroup.rmdir()
        leftovers = [b.ns for b in self.boards if b.ns in sh("ip", "netns", "list")]
        assert not leftovers, f"namespaces left behind: {leftovers}"


@pytest.fixture
def fleet(tmp_path):
    why = sshd_support.sshd_missing()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


def add_or_skip(fleet: Fleet, i: int) -> Board:
    try:
        return fleet.add_board(i)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"network namespaces / veth not permitted here: {exc}")


def runner_pids(server: sshd_support.SSHServer) -> list[int]:
    """The board's runner processes: python running defakeq_runner-*.py (not the launcher,
    `sh -c … defakeq_runner-*.py …`, whose first run only reports missing files)."""
    pids = []
    for p in server.session_pids():
        argv = sshd_support.cmdline(p).split()
        if len(argv) > 1 and "python" in argv[0] and argv[1].startswith("defakeq_runner"):
            pids.append(p)
    return pids


def test_fleet_parallel_trials_healthy_slowed_killed(fleet, tmp_path):
    boards = [add_or_skip(fleet, i) for i in (1, 2, 3)]
    try:
        fleet.slow_link(boards[1])
    except OSError as exc:
        pytest.skip(f"tc tbf not permitted here: {exc}")
    try:
        fleet.cpu_quota(boards[1], quota_us=20_000)  # 20 % of one core
    except OSError as exc:
        pytest.skip(f"cgroup v1 cpu quota not permitted here: {exc}")
    for b in boards:
        fleet.start_sshd(b)

    model = tmp_path / "clf.onnx"
    weights = onnx_classifier(model, hidden=1300)  # ~1 MB: ~1 s through the 8 Mbit link
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    common = dict(
        model=model, inputs=tmp_path / "x.npy", runtime="onnxruntime-cpu", threads=1, warmup=5
    )
    specs = {
        1: TrialSpec(**common, runs=50, min_secs=0.6, timeout_s=60),
        2: TrialSpec(**common, runs=50, min_secs=0.6, timeout_s=60),
        3: TrialSpec(**common, runs=10**7, min_secs=60, max_secs=60, timeout_s=90),  # dies first
    }
    outcomes: dict[int, TrialOutcome] = {}
    ended: dict[int, float] = {}

    def one_board(b: Board) -> None:  # one trial at a time per board
        transport = open_transport(fleet.device(b))
        try:
            outcomes[b.index] = run_trial(transport, specs[b.index])
        finally:
            transport.close()
            ended[b.index] = time.monotonic()

    start = time.monotonic()
    threads = [threading.Thread(target=one_board, args=(b,), daemon=True) for b in boards]
    for t in threads:
        t.start()
    victim = boards[2].server
    assert victim is not None
    while not runner_pids(victim) and time.monotonic() - start < 30:
        time.sleep(0.05)
    assert runner_pids(victim), f"board 3's runner never started: {outcomes}"
    time.sleep(0.3)  # mid-trial: the runner is inside its timed loop
    killed_at = time.monotonic()
    victim.kill()
    for t in threads:
        t.join(timeout=max(0.0, 60 - (time.monotonic() - start)))
    elapsed = time.monotonic() - start
    assert not any(t.is_alive() for t in threads), (
        f"a board hung: finished {sorted(outcomes)} after {elapsed:.0f} s"
    )
    assert elapsed < 60

    for i in (1, 2):
        o = outcomes[i]
        assert o.ok, f"board {i}: {o.error}"
        assert np.allclose(o.result["scores"], reference_scores(weights, x), atol=1e-5)
        assert o.result["latency"]["n"] >= 50 and o.result["latency"]["mean"] > 0
    dead = outcomes[3]
    assert not dead.ok and "connection lost" in dead.error, dead.error
    assert ended[3] - killed_at < 10  # noticed promptly, not at the 90 s command deadline

    # Board 2 is measurably slower, judged by ratios inside this one run.
    lat_ratio = outcomes[2].result["latency"]["mean"] / outcomes[1].result["latency"]["mean"]
    push_ratio = outcomes[2].timings["push_s"] / outcomes[1].timings["push_s"]
    print(
        f"board2/board1: latency mean x{lat_ratio:.1f}, push x{push_ratio:.1f}; fleet {elapsed:.1f} s"
    )
    assert lat_ratio > 1.5, f"CPU quota did not slow board 2's inference (x{lat_ratio:.2f})"
    assert push_ratio > 2.0, f"tbf did not slow board 2's pushes (x{push_ratio:.2f})"


def test_blackholed_link_fails_fast(fleet, tmp_path):
    b = add_or_skip(fleet, 4)
    server = fleet.start_sshd(b)
    t = SSHTransport(
        "blackholed",
        b.dev_ip,
        server.user,
        port=server.port,
        key_file=str(server.client_key),
        known_hosts=str(server.known_hosts),
        workdir=str(tmp_path / "wd"),
        keepalive_s=1.0,
        connect_timeout_s=2.0,
        dead_after_s=3.0,
        attempts=1,
    )
    try:
        t.connect()
        # Drop every packet silently: no RST, no FIN, the peer just goes quiet.
        timer = threading.Timer(
            0.5, sh, args=("ip", "netns", "exec", b.ns, "ip", "link", "set", b.dev_if, "down")
        )
        timer.start()
        start = time.monotonic()
        with pytest.raises(TransportError, match="connection lost") as err:
            t.exec(["sleep", "60"], timeout=60)
        took = time.monotonic() - start
        timer.join()
        print(f"blackholed link detected after {took:.1f} s (TCP_USER_TIMEOUT 3 s, keepalive 1 s)")
        assert err.value.transient
        assert took < 15, (
            f"took {took:.1f} s: the dead link was not detected by TCP_USER_TIMEOUT/keepalive"
        )
    finally:
        t.close()
