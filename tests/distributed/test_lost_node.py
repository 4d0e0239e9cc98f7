"""A node lost mid-epoch and the run resumed by its launcher, across namespace hosts.

node2 loses power (its link set down, every process on it SIGKILLed: nobody hears a connection
close) after the run's first checkpoint, inside its second epoch. Ray Train with
``engine.max_failures`` waits, saying for what, until a replacement node (node3) joins the
cluster, then continues from the last reported checkpoint; torchrun's elastic agent
(``--max-restarts``) re-forms the rendezvous when node2's agent is started again with the same
command, and launch/train.py continues from ``last.pt`` on the shared out_dir. Both end bit for
bit as the same ranks never interrupted on one host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from scaleq.distributed.process_group import free_port
from scaleq.train.metrics import read_metrics
from tests.distributed.conftest import ROOT, tiny_raw
from tests.distributed.test_multinode import BIN, as_tested, assert_same_run, documented, env, write_config
from tests.distributed.test_multinode_ray import NODE_FLAGS, stop, wait_for

pytestmark = pytest.mark.slow


def run_on_one_host(raw: dict, tmp_path: Path, ranks: int) -> Path:
    """The uninterrupted reference: the same ranks under torchrun on this host."""
    config = write_config(tmp_path, {**raw, "name": "one_host"})
    done = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", str(ranks), "--master_port", str(free_port()),
                           "launch/train.py", "--config", str(config)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return tmp_path / "runs" / "one_host"


def wait_until(condition, what: str, timeout: float, alive: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert alive.poll() is None, f"{what}: exited with {alive.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{log.read_text()[-4000:]}"
        time.sleep(0.1)


def mid_epoch_after(last: Path):
    """A condition: ``last`` has been rewritten since this call (with ``train.checkpoint_every_steps:
    1``, by a step of the epoch in progress)."""
    first = last.stat().st_mtime_ns
    return lambda: last.exists() and last.stat().st_mtime_ns != first


def mid_epoch_after_first_report(run_dir: Path, storage: Path):
    """A condition: Ray holds a reported (end-of-epoch) checkpoint and ``last.pt`` has been rewritten
    since by a step of the next epoch (``train.checkpoint_every_steps: 1``)."""
    seen: list[float] = []

    def check() -> bool:
        last = run_dir / "checkpoints" / "last.pt"
        if not seen:
            if storage.is_dir() and any(p.name.startswith("checkpoint") for p in storage.iterdir()) and last.exists():
                seen.append(last.stat().st_mtime_ns)
            return False
        return last.exists() and last.stat().st_mtime_ns != seen[0]

    return check


@pytest.mark.ray
def test_ray_train_waits_for_a_replacement_node_and_ends_as_uninterrupted(tmp_path, nbody_small, namespace_hosts):
    """docs' two-machine Ray cluster, ``engine.max_failures: 1``, one worker per node: node2 lost
    mid-epoch; the job says it waits for one more node with a CPU, node3 joins with the token, and
    the run continues from its last checkpoint to the end of a run on one host, bit for bit."""
    net = namespace_hosts(3)
    node1, node2, node3 = net.hosts
    raw = tiny_raw(tmp_path, nbody_small, name="ray_lost", epochs=4, checkpoint_every_steps=1)
    raw["data"]["batch_size"] = 4  # 32 samples / 2 ranks: 4 steps per epoch
    raw["engine"] = {"max_failures": 1}
    config = write_config(tmp_path, raw)
    token_line = documented("ray get-auth-token")
    head_line = documented("ray start --head --node-ip-address")
    join_line = documented("RAY_AUTH_MODE=token ray start --address node1:6379")
    submit_line = documented("RAY_AUTH_MODE=token ray job submit -- python launch/train.py --config configs/egnn_nbody.yaml engine.workers=2")
    submit_line = submit_line.replace("--config configs/egnn_nbody.yaml", f"--config {config}")

    homes = [tmp_path / f"home{h.index}" for h in net.hosts]
    tmpdirs = [Path(tempfile.mkdtemp(prefix=f"rq{h.index}", dir="/tmp")) for h in net.hosts]
    environs = [env(HOME=str(home), RAY_TMPDIR=str(tmp), NODE_IP=h.address)
                for h, home, tmp in zip(net.hosts, homes, tmpdirs)]
    for home in homes:
        home.mkdir()
    nodes: list[subprocess.Popen] = []
    submit = None
    try:
        made = node1.run(["bash", "-c", token_line], cwd=ROOT, env=environs[0], capture_output=True, timeout=60)
        assert made.returncode == 0, made.stderr[-2000:]
        for home in homes[1:]:
            (home / ".ray").mkdir()
            shutil.copy2(homes[0] / ".ray" / "auth_token", home / ".ray" / "auth_token")

        def start_node(i: int, line: str) -> None:
            log = tmp_path / f"{net.hosts[i].hostname}-ray.log"
            with open(log, "w") as out:
                nodes.append(net.hosts[i].popen(["bash", "-c", f"{line} {NODE_FLAGS}"], cwd=ROOT, env=environs[i],
                                                stdout=out, stderr=subprocess.STDOUT))
            wait_for(log, "Ray runtime started", nodes[-1], timeout=180)

        start_node(0, head_line)
        start_node(1, join_line)
        submit_log = tmp_path / "submit.log"
        with open(submit_log, "w") as out:
            submit = node1.popen(["bash", "-c", submit_line], cwd=ROOT, env=environs[0], stdout=out,
                                 stderr=subprocess.STDOUT)
        run_dir = tmp_path / "runs" / "ray_lost"
        wait_until(mid_epoch_after_first_report(run_dir, tmp_path / "runs" / "ray" / "ray_lost"),
                   "mid-epoch checkpoint after the first report", 300, submit, submit_log)
        node2.lose()
        lost_at = time.monotonic()
        says = "waiting for 1 more node with CPU 1 to place the worker group"
        wait_until(lambda: says in submit_log.read_text(), "line saying what the job waits for", 240, submit, submit_log)
        print(f"{time.monotonic() - lost_at:.1f} s after node2 was lost the job said: "
              + next(line for line in submit_log.read_text().splitlines() if says in line))
        start_node(2, join_line)
        submit.wait(timeout=420)
        text = submit_log.read_text()
        assert submit.returncode == 0, text[-5000:]
        assert "Ray Train finished" in text, text[-3000:]
        resumed = {line.split("resume   ")[1] for line in text.splitlines() if "resume   epoch" in line}
        assert resumed, text[-5000:]
        print(f"resumed at {resumed}")
    finally:
        if submit is not None and submit.poll() is None:
            submit.kill()
        for node in reversed(nodes):
            stop(node)
        for tmp in tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)

    assert_same_run(tmp_path / "runs" / "ray_lost", run_on_one_host(raw, tmp_path, 2))


def test_torchrun_elastic_resumes_when_the_node_returns_and_ends_as_uninterrupted(tmp_path, nbody_small,
                                                                                 namespace_hosts):
    """docs' elastic two-machine torchrun line (``--max-restarts``), 2 hosts x 1 rank: node2 lost
    mid-epoch; node1's rank stops within ``engine.peer_timeout_s`` naming node2, its agent restarts
    the workers and waits in the rendezvous; node2's agent, started again with the same command,
    joins, and both ranks continue from ``last.pt`` on the shared out_dir."""
    net = namespace_hosts(2)
    node1, node2 = net.hosts
    raw = tiny_raw(tmp_path, nbody_small, name="elastic", epochs=4, checkpoint_every_steps=1)
    raw["data"]["batch_size"] = 4  # 32 samples / 2 ranks: 4 steps per epoch
    raw["engine"] = {"peer_timeout_s": 10}
    command = as_tested(documented("TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 .venv/bin/torchrun"),
                        write_config(tmp_path, raw), 1)
    logs = {h.hostname: tmp_path / f"{h.hostname}.log" for h in net.hosts}
    agents: dict[str, subprocess.Popen] = {}

    def start_agent(host) -> None:
        with open(logs[host.hostname], "a") as out:
            agents[host.hostname] = host.popen(["bash", "-c", command], cwd=ROOT, env=env(), stdout=out,
                                               stderr=subprocess.STDOUT)

    for host in net.hosts:
        start_agent(host)
    run_dir = tmp_path / "runs" / "elastic"
    epoch_one = lambda: len(read_metrics(run_dir / "metrics.csv")) >= 1 if (run_dir / "metrics.csv").exists() else False  # noqa: E731
    wait_until(epoch_one, "first epoch", 300, agents["node1"], logs["node1"])
    mid_epoch = mid_epoch_after(run_dir / "checkpoints" / "last.pt")
    wait_until(mid_epoch, "mid-epoch checkpoint", 120, agents["node1"], logs["node1"])
    node2.lose()
    lost_at = time.monotonic()
    stopped = lambda: any(line.startswith("error: ") and "node2" in line  # noqa: E731
                          for line in logs["node1"].read_text().splitlines())
    wait_until(stopped, "line naming node2", 60, agents["node1"], logs["node1"])
    print(f"node1's rank stopped naming node2 {time.monotonic() - lost_at:.1f} s after node2 was lost")
    node2.reconnect()
    start_agent(node2)
    for name, agent in agents.items():
        agent.wait(timeout=420)
        assert agent.returncode == 0, f"{name}:\n{logs[name].read_text()[-5000:]}"
    text = logs["node1"].read_text() + logs["node2"].read_text()
    # rank 0's header, on either node: a mid-epoch resume (which epoch depends on how fast the loss came)
    assert re.search(r"^resume   epoch \d+, batch \d+", text, re.MULTILINE), text[-5000:]
    assert_same_run(run_dir, run_on_one_host(raw, tmp_path, 2))
