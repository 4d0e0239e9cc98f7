"""docs/distributed.md's two-machine DeepSpeed lines, run as written across two namespace hosts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from scaleq.distributed.process_group import free_port
from tests.distributed.conftest import ROOT, tiny_raw
from tests.distributed.test_multinode import BIN, assert_same_run, documented, env, write_config

pytestmark = [pytest.mark.slow, pytest.mark.deepspeed]


def as_tested(command: str, config: Path, hostfile: Path) -> str:
    """A documented deepspeed line for this machine: the venv, 2 CPU ranks per node, the test's files."""
    command = command.replace(".venv/bin/", f"{BIN}/").replace("--num_gpus 8", "--num_gpus 2")
    return command.replace("--config configs/egnn_nbody.yaml", f"--config {config}").replace(
        "--hostfile hostfile", f"--hostfile {hostfile}")


def test_deepspeed_no_ssh_per_node_on_two_hosts_ends_as_one_host(tmp_path, nbody_small, namespace_hosts):
    """The per-node form (`--no_ssh --node_rank N`), 2 hosts x 2 CPU ranks, against `--num_gpus 4`
    on one host: the same 4 ranks reduce in the same order, so the weights agree bit for bit."""
    net = namespace_hosts(2)
    raw = tiny_raw(tmp_path, nbody_small, name="ds_two_hosts", epochs=1)
    raw["data"]["batch_size"] = 4  # 32 samples / 4 ranks: 2 steps per rank
    config = write_config(tmp_path, raw)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h.hostname} slots=2\n" for h in net.hosts))
    line = as_tested(documented(".venv/bin/deepspeed --hostfile hostfile --no_ssh --node_rank 0"), config, hostfile)
    assert "--master_addr node1" in line and "engine.kind=deepspeed" in line

    logs = [tmp_path / f"{h.hostname}.log" for h in net.hosts]
    procs = []
    for host, log in zip(net.hosts, logs):
        with open(log, "w") as out:
            own = line.replace("--node_rank 0", f"--node_rank {host.index - 1}")
            procs.append(host.popen(["bash", "-c", own], cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT))
    for proc in procs:
        proc.wait(timeout=400)
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text()[-5000:]
    node1 = logs[0].read_text()
    # node1's own name is 127.0.1.1 there: the default-route / only-outward interface, not lo
    assert "gloo on node1: interface eth0" in node1, node1[-3000:]
    assert "gloo on node2: interface eth0" in logs[1].read_text(), logs[1].read_text()[-3000:]

    one = write_config(tmp_path, {**raw, "name": "one_host"})
    overrides = line.split(f"--config {config}")[1].split()
    single = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "4", "--master_port", str(free_port()),
                             "launch/train.py", "--config", str(one), *overrides], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert_same_run(tmp_path / "runs" / "ds_two_hosts", tmp_path / "runs" / "one_host")
