"""docs/distributed.md's two-machine DeepSpeed lines, run as written across two namespace hosts."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from scaleq.distributed.process_group import free_port
from tests.distributed.conftest import ROOT, tiny_raw
from tests.distributed.ssh_hosts import passwordless_ssh
from tests.distributed.ssh_hosts import unavailable as ssh_unavailable
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


def remote_environment(path: Path) -> Path:
    """The ``.deepspeed_env`` docs/distributed.md asks for (the venv's bin first on PATH), plus what
    keeps the ssh-started ranks' environment the one the test's other processes get: the session's
    HOME (tests/conftest.py; sshd would give /root), one thread per rank, Triton's interpreter."""
    lines = [f"PATH={BIN}:/usr/local/bin:/usr/bin:/bin", f"HOME={os.environ['HOME']}", "OMP_NUM_THREADS=1"]
    lines += [f"TRITON_INTERPRET={os.environ['TRITON_INTERPRET']}"] if "TRITON_INTERPRET" in os.environ else []
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_deepspeed_hostfile_through_pdsh_and_ssh_on_two_hosts_ends_as_one_host(tmp_path, nbody_small, namespace_hosts):
    """The hostfile form (`--hostfile hostfile --num_nodes 2`), run on node1 only: DeepSpeed checks
    `ssh node1`, then pdsh ssh's to both hosts, each sshd-started shell runs DeepSpeed's per-node
    launcher with `--node_rank=%n`. 2 hosts x 2 CPU ranks against `--num_gpus 4` on one host: bit
    for bit the same weights and metrics."""
    reason = ssh_unavailable()
    if reason is not None:
        pytest.skip(reason)
    net = namespace_hosts(2)
    raw = tiny_raw(tmp_path, nbody_small, name="ds_pdsh", epochs=1)
    raw["data"]["batch_size"] = 4  # 32 samples / 4 ranks: 2 steps per rank
    config = write_config(tmp_path, raw)
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h.hostname} slots=2\n" for h in net.hosts))
    line = as_tested(documented(".venv/bin/deepspeed --hostfile hostfile --num_nodes 2"), config, hostfile)
    assert "--master_addr node1" in line and "--no_ssh" not in line and "engine.kind=deepspeed" in line
    # DS_ENV_FILE: the launcher's own way to a .deepspeed_env elsewhere than ~ or the project root
    environ = env(DS_ENV_FILE=str(remote_environment(tmp_path / "deepspeed_env")))

    log = tmp_path / "pdsh.log"
    with passwordless_ssh(net.hosts, tmp_path / "ssh"), open(log, "w") as out:
        launcher = net.hosts[0].popen(["bash", "-c", line], cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT)
        try:
            launcher.wait(timeout=400)
        finally:
            # SIGKILL, never SIGTERM: DeepSpeed's pdsh runner answers SIGTERM with `pdsh ... pkill -f
            # "<python> -u -m deepspeed.launcher.launch"` on every node, and namespace hosts share
            # the machine's process table (it would hit any DeepSpeed run here)
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    text = log.read_text()
    assert launcher.returncode == 0, text[-5000:]
    # pdsh prefixes every line with the host it came from: both hosts ran their ranks
    assert "node1: " in text and "node2: " in text, text[-3000:]
    assert "gloo on node1: interface eth0" in text and "gloo on node2: interface eth0" in text, text[-3000:]

    one = write_config(tmp_path, {**raw, "name": "one_host"})
    overrides = line.split(f"--config {config}")[1].split()
    single = subprocess.run([str(BIN / "deepspeed"), "--num_gpus", "4", "--master_port", str(free_port()),
                             "launch/train.py", "--config", str(one), *overrides], cwd=ROOT, env=env(),
                            capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    assert_same_run(tmp_path / "runs" / "ds_pdsh", tmp_path / "runs" / "one_host")
