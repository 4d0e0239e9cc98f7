"""The real launchers end to end: a SIGKILLed run resumed, `deepspeed`, `ray start` + `ray job submit`."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml

from scaleq.distributed.process_group import free_port
from tests.distributed.conftest import ROOT, tiny_raw

BIN = Path(sys.executable).parent


def write_config(tmp_path, raw):
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def child_env(**extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return env


def train_cmd(config, *extra):
    return [sys.executable, "launch/train.py", "--config", str(config), *extra]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path, nbody_small):
    # 32 samples, batch 2: 16 steps per epoch, a checkpoint every 5 steps (mostly mid-epoch)
    raw = tiny_raw(tmp_path, nbody_small, name="full", epochs=6, checkpoint_every_steps=5)
    raw["data"]["batch_size"] = 2
    full = subprocess.run(train_cmd(write_config(tmp_path, raw)), cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    killed_cfg = write_config(tmp_path, {**raw, "name": "killed"})
    last = tmp_path / "runs" / "killed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(train_cmd(killed_cfg), cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = None
    try:
        while proc.poll() is None:
            if last.exists():
                state = torch.load(last, weights_only=False)["extra"]["state"]
                if state["epoch"] >= 1 and state["batch_in_epoch"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-epoch"
    assert not (last.parent.parent / "summary.json").exists()
    resumed = subprocess.run(train_cmd(killed_cfg, "--resume"), cwd=ROOT, env=child_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "runs" / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())
    assert b["best_epoch"] == a["best_epoch"]
    assert b["best_val_mse"] == pytest.approx(a["best_val_mse"], rel=1e-5)
    assert b["test_mse"] == pytest.approx(a["test_mse"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_launcher_two_cpu_ranks_train_and_resume(tmp_path, nbody_small):
    raw = tiny_raw(tmp_path, nbody_small, name="ds", epochs=1)
    raw["engine"] = {"kind": "deepspeed", "zero_stage": 2}
    config = write_config(tmp_path, raw)
    # as docs/distributed.md runs DeepSpeed on CPU ranks: the launcher told the accelerator, warnings only
    deepspeed = [str(BIN / "deepspeed"), "--log_level", "warning", "--num_gpus", "2", "--master_port",
                 str(free_port()), "launch/train.py", "--config", str(config)]
    env = {**child_env(), "DS_ACCELERATOR": "cpu"}
    first = subprocess.run(deepspeed, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    noise = [line for line in (first.stdout + first.stderr).splitlines()
             if "[INFO]" in line or "built successfully" in line or "Setting accelerator" in line]
    assert not noise, noise
    checkpoints = tmp_path / "runs" / "ds" / "checkpoints"
    tag = (checkpoints / "last.pt.ds" / "latest").read_text()
    assert (checkpoints / "last.pt.ds" / tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    second = subprocess.run(deepspeed + ["--resume", "train.epochs=2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / "ds" / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert len((tmp_path / "runs" / "ds" / "metrics.csv").read_text().splitlines()) == 3  # header + 2 epochs
    assert (checkpoints / "last.pt.ds" / "latest").read_text() != tag  # a newer tag, the old one removed
    assert not (checkpoints / "last.pt.ds" / tag).exists()


DOCS_PAGE = "docs/distributed.md"


def readme_ray_section() -> list[str]:
    """The documented Ray commands (docs/distributed.md, which the README links), in order, comments
    stripped: the token, the head, the first job."""
    lines = [line.split("  #")[0].strip() for line in (ROOT / DOCS_PAGE).read_text().splitlines()]
    wanted = ("ray get-auth-token", "ray start --head", "RAY_AUTH_MODE=token ray job submit")
    commands = []
    for prefix in wanted:
        matches = [line for line in lines if line.startswith(prefix)]
        assert matches, f"{DOCS_PAGE} has no line starting with {prefix!r} in its Ray section"
        commands.append(matches[0])
    return commands


def run_logged(command: str, env: dict, log: Path, **kwargs) -> subprocess.CompletedProcess:
    """Run one shell line of the README, its output kept in ``log`` for the failure message."""
    with open(log, "w") as out:
        return subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              **kwargs)


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text()[-chars:] if log.exists() else ""


@pytest.mark.slow
@pytest.mark.ray
def test_readme_ray_section_submits_a_job_on_a_machine_that_never_ran_ray(tmp_path, nbody_small, ray_tmpdir):
    token_cmd, head_cmd, submit_cmd = readme_ray_section()
    env = child_env(HOME=str(tmp_path / "home"))  # a machine that never ran Ray: no ~/.ray/auth_token
    Path(env["HOME"]).mkdir()
    token = run_logged(token_cmd, env, tmp_path / "token.log", timeout=60)
    assert token.returncode == 0, tail(tmp_path / "token.log")
    assert (Path(env["HOME"]) / ".ray" / "auth_token").is_file()

    dashboard = free_port()
    head_log = tmp_path / "ray-start.log"
    # The README's line, on this machine's loopback and free ports, blocking so that we own it.
    head_line = (f"exec {head_cmd} --block --node-ip-address=127.0.0.1 --port={free_port()} "
                 f"--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port={dashboard} "
                 f"--ray-client-server-port={free_port()} --num-cpus=2 --disable-usage-stats")
    with open(head_log, "w") as out:
        head = subprocess.Popen(["bash", "-c", head_line], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, f"ray start --head exited with {head.returncode}:\n{tail(head_log)}"
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                break
            except OSError:
                assert time.monotonic() < deadline, f"the Ray dashboard did not come up:\n{tail(head_log)}"
                time.sleep(1)
        config = write_config(tmp_path, tiny_raw(tmp_path, nbody_small, name="job", epochs=1))
        # The README's first job line with this cluster's address and a tiny config instead of the default.
        before, _, _ = submit_cmd.partition(" -- ")
        submit_line = f"{before} --address {address} -- python launch/train.py --config {config}"
        submit_log = tmp_path / "submit.log"
        submit = run_logged(submit_line, env, submit_log, timeout=400)
        assert submit.returncode == 0, tail(submit_log)
        assert "Ray Train finished" in submit_log.read_text()
        summary = json.loads((tmp_path / "runs" / "job" / "summary.json").read_text())
        assert summary["epochs_run"] == 1
        assert (tmp_path / "runs" / "ray" / "job").is_dir()  # Ray Train's storage: it ran through TorchTrainer
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node when told; never `ray stop`
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # our own child's process group, by its id
            head.wait()
