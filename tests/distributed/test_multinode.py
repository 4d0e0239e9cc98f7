"""The documented multi-node commands, run across real hosts (network namespaces, tests/distributed/hosts.py).

Each host has its own network stack, its own hostname and a Debian-style /etc/hosts (its own name
is 127.0.1.1): the set-up on which gloo, left to itself, advertises a loopback address. They share
the filesystem, as nodes with the checkout, the venv and ``out_dir`` on a shared mount do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from scaleq.distributed.process_group import free_port
from scaleq.train.checkpoint import read_model_state
from scaleq.train.metrics import read_metrics
from tests.distributed.conftest import ROOT, tiny_raw

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
DOCS = ROOT / "docs" / "distributed.md"
COMPARED = ("epoch", "train_loss", "train_mse", "val_mse", "test_mse")


def documented(prefix: str) -> str:
    """The first command of docs/distributed.md that starts with ``prefix`` (continuations joined)."""
    text = DOCS.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        line = " ".join(line.split("  #")[0].split())
        if line.startswith(prefix):
            return line
    raise AssertionError(f"{DOCS} has no command starting with {prefix!r}")


def as_tested(command: str, config: Path, ranks_per_node: int) -> str:
    """A documented command for this machine: the venv's path, tiny ranks, the test's config."""
    command = command.replace(".venv/bin/", f"{BIN}/").replace("--nproc_per_node 8", f"--nproc_per_node {ranks_per_node}")
    return command.replace("--config configs/egnn_nbody.yaml", f"--config {config}")


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return out


def write_config(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run_on_hosts(hosts, command: str, logs: Path, timeout: float,
                 environ: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """``command`` on every host at once; each host's exit code and output (stdout + stderr)."""
    logs.mkdir(exist_ok=True)
    logs = [open(logs / f"{h.hostname}.log", "w+") for h in hosts]  # noqa: SIM115
    try:
        procs = [h.popen(["bash", "-c", command], cwd=ROOT, env=environ or env(), stdout=log, stderr=subprocess.STDOUT)
                 for h, log in zip(hosts, logs)]
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(deadline - time.monotonic(), 1))
        out = []
        for proc, log in zip(procs, logs):
            log.seek(0)
            out.append((proc.returncode, log.read()))
        return out
    finally:
        for log in logs:
            log.close()


def assert_same_run(a: Path, b: Path) -> None:
    """Bit for bit the same weights and the same logged losses and metrics."""
    wa, wb = read_model_state(a / "checkpoints" / "last.pt"), read_model_state(b / "checkpoints" / "last.pt")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    ra, rb = read_metrics(a / "metrics.csv"), read_metrics(b / "metrics.csv")
    assert [[r[c] for c in COMPARED] for r in ra] == [[r[c] for c in COMPARED] for r in rb]


def test_torchrun_two_hosts_c10d_ends_as_one_host(tmp_path, nbody_small, namespace_hosts):
    """docs' two-machine torchrun line, 2 hosts x 2 CPU ranks, against the same 4 ranks on one host:
    gloo's all-reduce adds in the same order for the same ranks, so the weights agree bit for bit."""
    net = namespace_hosts(2)
    raw = tiny_raw(tmp_path, nbody_small, name="two_hosts", epochs=2)
    raw["data"]["batch_size"] = 4  # 32 samples / 4 ranks: 2 steps of 4 per rank and epoch
    command = as_tested(documented(".venv/bin/torchrun --nnodes 2"), write_config(tmp_path, raw), 2)
    results = run_on_hosts(net.hosts, command, tmp_path / "logs", timeout=300)
    for code, log in results:
        assert code == 0, log[-4000:]
    interface_lines = [line for _, log in results for line in log.splitlines() if line.startswith("gloo on")]
    assert any("interface eth0" in line and "node1" in line for line in interface_lines), interface_lines

    one = write_config(tmp_path, {**raw, "name": "one_host"})
    single = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "4", "--master_port", str(free_port()),
                             "launch/train.py", "--config", str(one)], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    assert_same_run(tmp_path / "runs" / "two_hosts", tmp_path / "runs" / "one_host")


def test_a_lost_host_stops_the_other_ranks_within_the_peer_timeout(tmp_path, nbody_small, namespace_hosts):
    """node2 loses power mid-run (link down, every process SIGKILLed: nobody hears a connection
    close). node1's ranks, blocked in a collective, stop within engine.peer_timeout_s (+ a 2 s
    heartbeat) with one line naming node2, instead of gloo's 30 minutes."""
    net = namespace_hosts(2)
    node1, node2 = net.hosts
    raw = tiny_raw(tmp_path, nbody_small, name="lost", epochs=200, patience=1000)
    raw["data"]["batch_size"] = 4
    raw["engine"] = {"peer_timeout_s": 10}
    command = as_tested(documented(".venv/bin/torchrun --nnodes 2"), write_config(tmp_path, raw), 2)
    logs = [open(tmp_path / f"{h.hostname}.log", "w") for h in net.hosts]  # noqa: SIM115
    procs = [h.popen(["bash", "-c", command], cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
             for h, log in zip(net.hosts, logs)]
    last = tmp_path / "runs" / "lost" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 180
    while not last.exists():
        assert time.monotonic() < deadline and procs[0].poll() is None, (tmp_path / "node1.log").read_text()[-3000:]
        time.sleep(0.2)
    node2.lose()
    lost_at = time.monotonic()
    procs[0].wait(timeout=120)
    stopped_after = time.monotonic() - lost_at
    for log in logs:
        log.close()
    out = (tmp_path / "node1.log").read_text()
    assert procs[0].returncode != 0
    reports = [line for line in out.splitlines() if line.startswith("error: ") and "node2" in line]
    assert reports, out[-4000:]
    print(f"node1 stopped {stopped_after:.1f} s after node2 was lost: {reports[0]}")
    assert stopped_after < 10 + 2 + 30  # the watch's verdict, then torchrun's own shutdown of its workers


def test_a_resume_whose_hosts_see_different_checkpoints_is_refused_in_one_line(tmp_path, nbody_small, namespace_hosts):
    """out_dir on each host's own disk instead of a shared one: node2 sees an empty out_dir where
    node1 sees the run's last.pt (a mount namespace binds an empty folder over it on node2). The
    resume stops on every rank with one line naming the checkpoint, instead of each node training on
    from its own weights (or node2's ranks from scratch)."""
    net = namespace_hosts(2)
    node1, node2 = net.hosts
    raw = tiny_raw(tmp_path, nbody_small, name="split", epochs=1)
    raw["data"]["batch_size"] = 4
    config = write_config(tmp_path, raw)
    first = subprocess.run([sys.executable, "launch/train.py", "--config", str(config)], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    local_disk = tmp_path / "node2-disk"
    local_disk.mkdir()
    command = as_tested(documented(".venv/bin/torchrun --nnodes 2"), config, 2) + " --resume train.epochs=2"
    own_disk = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind {local_disk} {tmp_path / "runs"} && exec bash -c "$0"', command]
    logs = [open(tmp_path / f"{h.hostname}.log", "w+") for h in net.hosts]  # noqa: SIM115
    procs = [node1.popen(["bash", "-c", command], cwd=ROOT, env=env(), stdout=logs[0], stderr=subprocess.STDOUT),
             node2.popen(own_disk, cwd=ROOT, env=env(), stdout=logs[1], stderr=subprocess.STDOUT)]
    for proc in procs:
        proc.wait(timeout=240)
    outs = []
    for log in logs:
        log.seek(0)
        outs.append(log.read())
        log.close()
    for proc, out in zip(procs, outs):
        assert proc.returncode != 0, out[-3000:]
    refusals = {line for out in outs for line in out.splitlines()
                if line.startswith("error: ") and "the ranks see different checkpoints" in line}
    assert len(refusals) == 1, outs[0][-3000:] + outs[1][-3000:]
    assert f"{tmp_path / 'runs' / 'split' / 'checkpoints' / 'last.pt'}:" in refusals.pop()
    assert not any(line.startswith("epoch    2") for out in outs for line in out.splitlines())


@pytest.mark.parametrize("graph_parallel", [2, 4], ids=["groups_inside_a_node", "group_across_hosts"])
def test_graph_parallel_on_two_hosts_ends_as_one_host(graph_parallel, tmp_path, nbody_small, namespace_hosts):
    """engine.graph_parallel over the two-machine torchrun line, 2 hosts x 2 ranks: R = 2 keeps each
    group inside a node (ranks are numbered node by node), R = 4 makes one group span both hosts, its
    halo exchange crossing the bridge. Either ends bit for bit as the same 4 ranks on one host."""
    net = namespace_hosts(2)
    raw = tiny_raw(tmp_path, nbody_small, name="gp_two_hosts", epochs=1)
    raw["data"]["batch_size"] = 4
    raw["engine"] = {"graph_parallel": graph_parallel}
    command = as_tested(documented(".venv/bin/torchrun --nnodes 2"), write_config(tmp_path, raw), 2)
    for code, log in run_on_hosts(net.hosts, command, tmp_path / "logs", timeout=300):
        assert code == 0, log[-4000:]
    one = write_config(tmp_path, {**raw, "name": "one_host"})
    single = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "4", "--master_port", str(free_port()),
                             "launch/train.py", "--config", str(one)], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    assert_same_run(tmp_path / "runs" / "gp_two_hosts", tmp_path / "runs" / "one_host")
