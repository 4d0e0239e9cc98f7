"""docs/distributed.md's two-machine Ray cluster, run as written across two namespace hosts.

node1 makes the token and starts the head, node2 gets a copy of node1's ``~/.ray/auth_token`` in a
HOME of its own and joins with ``ray start --address node1:6379``; ``ray job submit`` on node1 runs
launch/train.py with one worker per node (STRICT_SPREAD). Each host has its own RAY_TMPDIR, so the
nodes share nothing but the filesystem's checkout, data and out_dir (as machines on a shared mount).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from scaleq.distributed.process_group import free_port
from tests.distributed.conftest import ROOT, tiny_raw
from tests.distributed.test_multinode import BIN, assert_same_run, documented, env, write_config

pytestmark = [pytest.mark.slow, pytest.mark.ray]

# Test-only additions to the documented `ray start` lines: --block so that the test owns the node
# and stops it by its pid (never `ray stop`), a small object store (two nodes share this machine's
# /dev/shm), no usage-stats prompt.
NODE_FLAGS = "--block --num-cpus 2 --object-store-memory 100000000 --disable-usage-stats"


def wait_for(log: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in (log.read_text() if log.exists() else ""):
        assert process.poll() is None, f"{log.name}: exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{log.name}: no {text!r} in {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """`ray start --block` stops its node on SIGTERM; the host's teardown kills whatever is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_ray_cluster_on_two_hosts_ends_as_one_host(tmp_path, nbody_small, namespace_hosts):
    net = namespace_hosts(2)
    node1, node2 = net.hosts
    raw = tiny_raw(tmp_path, nbody_small, name="ray_two_hosts", epochs=2)
    config = write_config(tmp_path, raw)
    token_line = documented("ray get-auth-token")
    head_line = documented("ray start --head --node-ip-address")
    join_line = documented("RAY_AUTH_MODE=token ray start --address node1:6379")
    submit_line = documented("RAY_AUTH_MODE=token ray job submit -- python launch/train.py --config configs/egnn_nbody.yaml engine.workers=2")
    submit_line = submit_line.replace("--config configs/egnn_nbody.yaml", f"--config {config}")
    assert "STRICT_SPREAD" in submit_line

    homes = [tmp_path / f"home{h.index}" for h in net.hosts]
    tmpdirs = [Path(tempfile.mkdtemp(prefix=f"rq{h.index}", dir="/tmp")) for h in net.hosts]  # short: socket paths
    environs = [env(HOME=str(home), RAY_TMPDIR=str(tmp), NODE_IP=h.address)
                for h, home, tmp in zip(net.hosts, homes, tmpdirs)]
    for home in homes:
        home.mkdir()
    nodes: list[subprocess.Popen] = []
    try:
        made = node1.run(["bash", "-c", token_line], cwd=ROOT, env=environs[0], capture_output=True, timeout=60)
        assert made.returncode == 0, made.stderr[-2000:]
        (homes[1] / ".ray").mkdir()
        shutil.copy2(homes[0] / ".ray" / "auth_token", homes[1] / ".ray" / "auth_token")  # as the docs say

        logs = [tmp_path / f"{h.hostname}-ray.log" for h in net.hosts]
        for host, line, environ, log in zip(net.hosts, (head_line, join_line), environs, logs):
            with open(log, "w") as out:
                nodes.append(host.popen(["bash", "-c", f"{line} {NODE_FLAGS}"], cwd=ROOT, env=environ,
                                        stdout=out, stderr=subprocess.STDOUT))
            wait_for(log, "Ray runtime started", nodes[-1], timeout=180)

        submit_log = tmp_path / "submit.log"
        with open(submit_log, "w") as out:
            submit = node1.popen(["bash", "-c", submit_line], cwd=ROOT, env=environs[0], stdout=out,
                                 stderr=subprocess.STDOUT)
            submit.wait(timeout=420)
        text = submit_log.read_text()
        assert submit.returncode == 0, text[-5000:]
        assert "Ray Train finished" in text, text[-3000:]
        # one worker per node: each node's first rank names its own host and the interface it picked
        for host in net.hosts:
            assert f"gloo on {host.hostname}: interface eth0" in text, text[-5000:]
    finally:
        for node in reversed(nodes):
            stop(node)
        for tmp in tmpdirs:
            shutil.rmtree(tmp, ignore_errors=True)

    one = write_config(tmp_path, {**raw, "name": "one_host"})
    single = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
                             "launch/train.py", "--config", str(one)], cwd=ROOT, env=env(), capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-4000:]
    assert_same_run(tmp_path / "runs" / "ray_two_hosts", tmp_path / "runs" / "one_host")
