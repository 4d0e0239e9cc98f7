"""The DeepSpeed engine compiles nothing on first use: its optimizer is torch's Adam (fused on
CUDA), whatever TORCH_CUDA_ARCH_LIST holds; and a DeepSpeed op that does fail to build is
reported in one line naming the op, the cause and the fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scaleq.distributed.deepspeed_engine import deepspeed_config

pytestmark = [pytest.mark.deepspeed]

ROOT = Path(__file__).resolve().parents[2]

# One real engine in a fresh interpreter: ZeRO-2, bf16 autocast, one step. DeepSpeed records every
# op it loads (compiled or cached) in OpBuilder._loaded_ops; the extensions folder holds what it
# compiled. Both are read before and after the optimizer is built.
PROBE = """
import json, os, sys
from pathlib import Path
import torch
from deepspeed.ops.op_builder.builder import OpBuilder
from scaleq.distributed.deepspeed_engine import DeepSpeedEngine
from scaleq.losses import position_mse
from tests.support.distributed import tiny_model, whole_batch

def built():
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.so"))

folder = Path(os.environ["TORCH_EXTENSIONS_DIR"])
engine = DeepSpeedEngine(micro_batch_size=8, device="cpu", zero_stage=int(sys.argv[1]), precision="bf16")
at_init, files_at_init = sorted(OpBuilder._loaded_ops), built()
model = engine.wrap(tiny_model(), None)
batch = whole_batch()
engine.backward(position_mse(model(batch)["pos"], batch.target))
engine.step()
optimizer = engine._ds.basic_optimizer
print(json.dumps({
    "ops_at_init": at_init, "ops_after_step": sorted(OpBuilder._loaded_ops),
    "files_at_init": files_at_init, "files_after_step": built(),
    "optimizer": f"{type(optimizer).__module__}.{type(optimizer).__name__}",
    "foreach": optimizer.defaults.get("foreach"), "fused": optimizer.defaults.get("fused"),
    "finite": all(torch.isfinite(p).all().item() for p in engine.module.parameters()),
}))
engine.close()
"""


def probe_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
        "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(29500 + os.getpid() % 1000), **extra,
    }


def test_the_optimizer_is_torch_adam_on_every_device_and_deepspeed_cpu_adam_only_for_offload():
    cuda = deepspeed_config(micro_batch_size=4, zero_stage=2, precision="bf16", device_type="cuda")["optimizer"]
    assert cuda["params"]["torch_adam"] is True and cuda["params"]["fused"] is True  # torch's compiled fused kernel
    cpu = deepspeed_config(micro_batch_size=4, device_type="cpu")["optimizer"]
    assert cpu["params"]["torch_adam"] is True and cpu["params"]["foreach"] is True
    offload = deepspeed_config(micro_batch_size=4, zero_stage=2, offload_optimizer=True, device_type="cuda")
    assert "torch_adam" not in offload["optimizer"]["params"]  # ZeRO-Offload needs DeepSpeed's CPU Adam


@pytest.mark.slow
def test_zero2_bf16_engine_builds_its_optimizer_without_compiling_any_op(tmp_path):
    """With the arch list that crashed DeepSpeed's FusedAdam builder ('9.0a'): no op is loaded or
    compiled between the engine's start and the end of its first step, and the optimizer is torch's."""
    env = probe_env(tmp_path, TORCH_CUDA_ARCH_LIST="9.0a;10.0a")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(env["HOME"]) / ".cache" / "torch_extensions"))
    run = subprocess.run([sys.executable, "-c", PROBE, "2"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ops_after_step"] == report["ops_at_init"], report  # the optimizer loaded no op
    assert report["files_after_step"] == report["files_at_init"], report  # and compiled nothing
    assert report["ops_at_init"] in ([], ["deepspeed_shm_comm"])  # the CPU accelerator's all-reduce op, at most
    assert report["optimizer"] == "torch.optim.adam.Adam" and report["foreach"] is True
    assert report["finite"]


@pytest.mark.slow
def test_a_failing_op_build_is_one_line_naming_the_op_and_the_fix(tmp_path):
    """A real failed build: a fresh extensions folder and a C++ compiler that fails, so DeepSpeed's
    CPU accelerator cannot compile its shared-memory op; the engine says which op, why and what to do."""
    fresh = tmp_path / "extensions"
    fresh.mkdir()
    env = probe_env(tmp_path, TORCH_EXTENSIONS_DIR=str(fresh), CXX="/bin/false", CC="/bin/false")
    run = subprocess.run([sys.executable, "-c", PROBE, "0"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: DeepSpeed could not compile its 'deepspeed_shm_comm' op on first use"), last
    assert "Fix:" in last and "C++ compiler" in last
