"""Emulated boards with real boundaries (``deepedge.netem``): namespaces that see each other
only through the bridge, links shaped to their profile's rate, cgroups that hold a board to its
CPU quota, and a teardown — normal, or by the next run after a kill — that leaves no namespace,
veth, qdisc, cgroup or record behind. The root-only tests are skipped elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from deepedge.netem import (
    STATE_DIR,
    BoardSpec,
    CgroupLimits,
    Cgroups,
    EmulatedNetwork,
    LinkProfile,
    NetemError,
    cleanup_leftovers,
    detect_cgroups,
    qdisc_args,
    why_not_usable,
)

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(why_not_usable() is not None, reason=f"{why_not_usable()}")


# ---- pure parts -------------------------------------------------------------------------------


def test_a_link_describes_itself_and_refuses_the_impossible() -> None:
    assert LinkProfile(1e9, 0.2).describe() == "1 Gb/s, 0.2 ms"
    assert LinkProfile(50e6, 3, 1, 0.1).describe() == "50 Mb/s, 3 ms ± 1 ms, 0.1 % loss"
    assert LinkProfile(50e6).scaled(0.01).describe() == "500 kb/s"
    for bad in (dict(rate_bps=0), dict(rate_bps=1e6, loss_pct=101), dict(rate_bps=1e6, delay_ms=-1)):
        with pytest.raises(ValueError):
            LinkProfile(**bad)  # type: ignore[arg-type]


def test_netem_shapes_rate_delay_jitter_and_loss_and_tbf_only_the_rate() -> None:
    link = LinkProfile(50e6, 3, 1, 0.5, queue_ms=50)
    args, shaping = qdisc_args(link, netem=True)
    assert args[:6] == ["netem", "delay", "3ms", "1ms", "distribution", "normal"]
    assert args[6:9] == ["loss", "random", "0.5%"]
    assert args[9:11] == ["rate", "50000000bit"]
    assert int(args[12]) == int(50e6 / 8 * 0.05 // 1514)  # the queue holds 50 ms of the link
    assert shaping.missing == ()
    args, shaping = qdisc_args(link, netem=False)
    assert args == ["tbf", "rate", "50000000bit", "burst", str(64 * 1024), "latency", "50ms"]
    assert shaping.missing == ("delay", "jitter", "loss")
    assert "not emulated" in shaping.describe()
    args, _ = qdisc_args(LinkProfile(1e9), netem=False)
    assert args[4] == str(int(1e9 / 8 * 0.004))  # 4 ms of a fast link in the bucket


V1_MOUNTS = """\
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_cgroup_v1_goes_under_this_process_own_cgroup_in_each_hierarchy() -> None:
    found = detect_cgroups(V1_MOUNTS, "4:memory:/jail/x\n3:cpuset:/\n1:cpu:/\n0::/\n")
    assert isinstance(found, Cgroups) and found.version == 1
    assert found.parents == {
        "cpu": Path("/sys/fs/cgroup/cpu"),
        "cpuset": Path("/sys/fs/cgroup/cpuset"),
        "memory": Path("/sys/fs/cgroup/memory/jail/x"),
    }
    assert isinstance(detect_cgroups("cgroup /c/cpu cgroup rw,cpu 0 0\n", "1:cpu:/\n"), NetemError)


def test_cgroup_v2_goes_beside_this_process_and_sets_cpu_max_cpuset_and_memory_max(tmp_path: Path) -> None:
    """On a fake v2 tree: the run's folder is made beside this process's cgroup (the parent has
    the controllers), the controllers are delegated to it, and the board's leaf gets the limits."""
    parent = tmp_path / "user.slice"
    (parent / "me").mkdir(parents=True)
    (parent / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (parent / "cgroup.subtree_control").write_text("cpu memory cpuset\n")
    found = detect_cgroups(f"cgroup2 {tmp_path} cgroup2 rw 0 0\n", "0::/user.slice/me\n")
    assert isinstance(found, Cgroups) and found.version == 2
    assert found.controllers == ("cpu", "cpuset", "memory")
    made: list[Path] = []
    group = found.create("abc123", "nano", CgroupLimits(0.25, (1,), 2 * 2**30, period_us=20_000), made.append)
    run = parent / "deepedge-abc123"
    assert made == [run, run / "nano"]
    assert (run / "cgroup.subtree_control").read_text() == "+cpu +cpuset +memory"
    leaf = run / "nano"
    assert (leaf / "cpu.max").read_text() == "5000 20000"
    assert (leaf / "cpuset.cpus").read_text() == "1"
    assert (leaf / "memory.max").read_text() == str(2 * 2**30)
    assert group.dirs == (leaf,)


# ---- on this machine, as root -----------------------------------------------------------------


def _in(net: EmulatedNetwork, board: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        net.argv(board, [sys.executable, "-c", textwrap.dedent(code)]),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _serve(net: EmulatedNetwork, board: str, port: int) -> subprocess.Popen[str]:
    """A TCP sink on ``board``: counts what it receives, answers one byte at the end."""
    code = f"""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("{net.boards[board].address}", {port})); s.listen(4); print("ready", flush=True)
        while True:
            c, _ = s.accept()
            while c.recv(1 << 20): pass
            c.sendall(b"x"); c.close()
    """
    proc = subprocess.Popen(
        net.argv(board, [sys.executable, "-c", textwrap.dedent(code)]), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    """SIGKILL, reaped, its pipe closed."""
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _send(net: EmulatedNetwork, src: str, dst: str, port: int, nbytes: int) -> float:
    """Bits per second of a ``nbytes`` TCP transfer from ``src`` to ``dst`` (payload only)."""
    code = f"""
        import socket, time
        c = socket.create_connection(("{net.boards[dst].address}", {port}), timeout=5)
        buf, sent, t = b"\\0" * (1 << 20), 0, time.perf_counter()
        while sent < {nbytes}:
            n = min(len(buf), {nbytes} - sent); c.sendall(buf[:n]); sent += n
        c.shutdown(socket.SHUT_WR); c.recv(1)
        print({nbytes} * 8 / (time.perf_counter() - t))
    """
    out = _in(net, src, code, timeout=60)
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


def _ours(tag: str) -> list[str]:
    """Anything of run ``tag`` still on the machine."""
    left = []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    left += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if tag in line]
    nss = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    left += [f"netns {line.split()[0]}" for line in nss.splitlines() if tag in line]
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    left += [f"qdisc {line}" for line in qdiscs.splitlines() if tag in line]
    found = detect_cgroups()
    if isinstance(found, Cgroups):
        left += [f"cgroup {d}" for d in found.run_dirs(tag) if d.exists()]
    if (STATE_DIR / f"{tag}.json").exists():
        left.append("record")
    return left


SPECS = [
    BoardSpec("orin", LinkProfile(1e9, 0.2), CgroupLimits(0.5, (), 2**30)),
    BoardSpec("nano", LinkProfile(50e6, 3, 1), CgroupLimits(0.2, (), 2**30)),
    BoardSpec("tx2", LinkProfile(200e6, 1), CgroupLimits(0.3, (), 2**30)),
]


@needs_root
@pytest.mark.slow
def test_boards_see_each_other_only_through_the_bridge() -> None:
    with EmulatedNetwork(SPECS) as net:
        orin, nano = net.boards["orin"], net.boards["nano"]
        links = _in(net, "orin", "import socket; print(sorted(n for _, n in socket.if_nameindex()))")
        assert links.stdout.strip() == "['eth0', 'lo']"  # nothing of the host's: no eth0 of its own, no bridge
        sink = _serve(net, "nano", 7000)
        try:
            assert _send(net, "orin", "nano", 7000, 100_000) > 0  # through the bridge
            # the root namespace is reachable only at the bridge's address (the broker's)
            unreach = _in(
                net,
                "orin",
                "import socket\ntry:\n socket.create_connection(('8.8.8.8', 53), timeout=1)\n"
                "except OSError as e: print(e.errno)",
            )
            assert unreach.stdout.strip() == "101"  # ENETUNREACH: no route out of the /24
            net.cut("nano")  # nano's cable pulled at the bridge: orin cannot reach it any more
            cut = _in(
                net,
                "orin",
                f"import socket\ntry:\n socket.create_connection(('{nano.address}', 7000), timeout=1.5); print('ok')\n"
                "except OSError as e: print('cut', e)",
            )
            assert cut.stdout.startswith("cut"), cut.stdout
            net.restore("nano")
            assert _send(net, "orin", "nano", 7000, 100_000) > 0
        finally:
            _stop(sink)
        assert orin.address != nano.address and net.gateway not in (orin.address, nano.address)


@needs_root
@pytest.mark.slow
def test_a_shaped_link_carries_its_profile_rate_within_20_percent() -> None:
    """nano's 50 Mb/s in each direction (its own end shapes what it sends, the bridge's end
    what it receives), tx2's 200 Mb/s, and nano re-shaped to 10 Mb/s while it runs."""
    with EmulatedNetwork(SPECS) as net:
        sinks = [_serve(net, b, 7001) for b in ("orin", "nano")]
        try:
            up = _send(net, "nano", "orin", 7001, 6_000_000)
            down = _send(net, "orin", "nano", 7001, 6_000_000)
            tx2 = _send(net, "tx2", "orin", 7001, 20_000_000)
            net.reshape("nano", LinkProfile(10e6))
            slow = _send(net, "nano", "orin", 7001, 1_500_000)
        finally:
            for s in sinks:
                _stop(s)
    for measured, profile in ((up, 50e6), (down, 50e6), (tx2, 200e6), (slow, 10e6)):
        assert 0.8 * profile <= measured <= 1.2 * profile, (measured, profile)


@needs_root
@pytest.mark.slow
def test_a_board_cgroup_holds_it_to_its_cpu_quota() -> None:
    with EmulatedNetwork(SPECS[1:2]) as net:
        if net.cgroups is None:
            pytest.skip(net.cgroup_problem)
        busy = subprocess.Popen(
            net.argv("nano", [sys.executable, "-c", "while True: pass"]), preexec_fn=net.preexec("nano")
        )
        try:
            time.sleep(0.5)
            assert busy.pid in net.pids("nano")
            used = psutil.Process(busy.pid).cpu_percent(2.0) / 100
        finally:
            busy.kill()
            busy.wait()
    assert 0.1 <= used <= 0.26, used  # quota 0.2 CPU


@needs_root
@pytest.mark.slow
def test_teardown_leaves_no_namespace_veth_qdisc_cgroup_or_record() -> None:
    net = EmulatedNetwork(SPECS).up()
    sleeper = subprocess.Popen(net.argv("tx2", ["sleep", "60"]), preexec_fn=net.preexec("tx2"))
    assert _ours(net.tag)  # it is all there
    assert net.down() == []
    sleeper.wait(5)  # killed with its namespace
    assert _ours(net.tag) == []


@needs_root
@pytest.mark.slow
def test_a_killed_run_is_cleaned_up_by_the_next() -> None:
    code = """
        import sys, time
        from deepedge.netem import BoardSpec, CgroupLimits, EmulatedNetwork, LinkProfile
        specs = [BoardSpec("a", LinkProfile(1e8), CgroupLimits(0.3)), BoardSpec("b", LinkProfile(1e8))]
        net = EmulatedNetwork(specs).up()
        print(net.tag, flush=True)
        time.sleep(60)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    tag = proc.stdout.readline().strip()
    assert len(tag) == 6 and _ours(tag)
    _stop(proc)  # SIGKILL: no teardown of its own
    assert _ours(tag)
    removed = cleanup_leftovers(_cgroup_parents())
    assert any(tag in line for line in removed), removed
    assert _ours(tag) == []


def _cgroup_parents() -> list[Path]:
    found = detect_cgroups()
    return sorted(set(found.parents.values())) if isinstance(found, Cgroups) else []
