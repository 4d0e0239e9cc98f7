"""One command that checks a CUDA machine end to end, in a bounded time, installing nothing.

Parts, in order, each in its own child process (a failure, a hang or an out-of-memory kill ends
only that part; the check goes on):

    pytest -m gpu      the tests that need CUDA (on a CPU they collect and skip)
    bench_gpu          launch/bench_gpu.py: radius-graph backends, training steps, edge reductions
    large_graph        launch/bench_large_graph.py: EGNN and FastEGNN, one graph of 10M particles
                       and of 20M (Triton path, layers checkpointed), a fresh process per size
    deepspeed          the README's DeepSpeed command (ZeRO-2, bf16, activation checkpointing) with
                       the deepspeed launcher, on a Water-3D store in the published tfrecord format
                       that the check writes (scaleq.sources.water3d_writer) and converts (data_prep/water3d.py)
    profile            torch.profiler over one training step per model: the top kernels by device
                       time, host reads of device values, cudaStreamSynchronize calls and
                       device-to-host copies per step

Each part gets a share of ``budget_s`` (plus whatever earlier parts left unused) as its time
limit. ``--device cpu --quick`` runs the same parts on small sizes (the test suite runs it, so
the check keeps working where no GPU is); the summary says which parts need CUDA to mean
something. Writes ``<out>/gpu_check.csv``, each part's full output to ``<out>/gpu_check_logs/``,
and whatever the parts write (``gpu_<device>.csv/.png``, ``large_graph.csv``, ``profile_<device>.csv``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scaleq.bench.child import run_child
from scaleq.io import write_rows

ROOT = Path(__file__).resolve().parents[2]
PROFILE_COLUMNS = ("model", "kind", "name", "device_ms", "calls", "nodes", "edges", "device")


@dataclass(frozen=True)
class Settings:
    device: str  # 'cuda' or 'cpu'
    quick: bool
    budget_s: float
    out: Path
    work: Path  # scratch folder for the Water-3D store and the run


@dataclass(frozen=True)
class Part:
    name: str
    needs_cuda: bool  # on a CPU it runs, but only CUDA makes its numbers mean something
    share: float  # of the budget
    command: Callable[[Settings], list[str]]  # may prepare files first
    judge: Callable[[str], tuple[str, str]]  # stdout of a successful child -> (status, detail)


@dataclass(frozen=True)
class Outcome:
    part: str
    needs_cuda: bool
    status: str  # pass, fail, skipped
    seconds: float
    detail: str


# -- the parts -------------------------------------------------------------------------------------


def gpu_test_files() -> list[str]:
    """The test files that hold a ``gpu``-marked test (collecting only them keeps the part short)."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())


def _pytest(s: Settings) -> list[str]:
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *gpu_test_files()]


def _judge_pytest(stdout: str) -> tuple[str, str]:
    last = next((line.strip("= ") for line in reversed(stdout.splitlines()) if re.search(r"\d+ (passed|skipped)", line)), "")
    if "passed" not in last and "skipped" in last:
        return "skipped", f"{last} (no CUDA here)"
    return "pass", last


def _bench_gpu(s: Settings) -> list[str]:
    sizes = ["--quick"] if s.quick else ["--max-nodes", "1000000", "--repeats", "5"]
    return [sys.executable, "launch/bench_gpu.py", "--device", s.device, *sizes, "--out", str(s.out)]


def _judge_wrote(stdout: str) -> tuple[str, str]:
    wrote = [line for line in stdout.splitlines() if line.startswith("wrote ")]
    return "pass", wrote[-1] if wrote else "done"


def _large_graph(s: Settings) -> list[str]:
    if s.quick:
        sizes = ["--paths", "torch", "--start-nodes", "500", "--max-nodes", "500"]  # one size: a child start costs seconds
    else:
        sizes = ["--paths", "triton", "--checkpointing", "1", "--start-nodes", "10000000", "--max-nodes", "20000000"]
    # every size gets at most a third of the part's share: a size that does not finish is a result too
    per_size = max(30, int(s.budget_s * PARTS_SHARE["large_graph"] / 3))
    return [sys.executable, "launch/bench_large_graph.py", "--device", s.device, "--models", "egnn", "fastegnn", *sizes,
            "--budget-mb", "1e9", "--compare-nodes", "0", "--timeout-s", str(per_size), "--out", str(s.out)]


def _judge_large_graph(stdout: str) -> tuple[str, str]:
    sizes = re.findall(r"^\s+(\w+)\s+\w+\s+N=\s*([\d,]+): (.*)$", stdout, flags=re.MULTILINE)
    found = "; ".join(f"{m} {n}: {'ok ' + r.split(',')[-1].strip() if 'failed' not in r else r}" for m, n, r in sizes)
    return "pass", found or "no sizes measured"


def water3d_store(s: Settings) -> Path:
    """A small store in Water-3D's published format: tfrecords written by an independent encoder,
    converted by data_prep/water3d.py (as a user converts the real download)."""
    from scaleq.sources.water3d_writer import write_sample_source

    source = write_sample_source(s.work / "water3d_source", particles=300 if s.quick else 8000, steps=24)
    store = s.work / "water3d"
    converted = run_child([sys.executable, "data_prep/water3d.py", "--src", str(source), "--out", str(store),
                           "--overwrite"], env=child_env(), timeout_s=300)
    if not converted.ok:
        raise RuntimeError(f"data_prep/water3d.py failed: {converted.error}")
    return store


def _deepspeed(s: Settings) -> list[str]:
    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    if not Path(launcher).exists():
        raise FileNotFoundError("the deepspeed launcher is not installed (pip install deepspeed)")
    store = water3d_store(s)
    from scaleq.distributed.process_group import free_port

    small = ["model.hidden=8", "model.layers=2", "data.max_train_samples=4", "data.max_eval_samples=2",
             "data.batch_size=2"] if s.quick else ["data.batch_size=4"]
    return [launcher, "--num_gpus", "1", "--master_port", str(free_port()), "launch/train.py",
            "--config", "configs/water3d.yaml", f"data.path={store}", f"out_dir={s.work / 'runs'}",
            "engine.kind=deepspeed", "engine.zero_stage=2", "train.precision=bf16", "model.gradient_checkpointing=1",
            f"train.device={s.device}", "train.epochs=2", "train.eval_every=1", "train.progress=false",
            "data.num_workers=0", *small]


def _judge_deepspeed(stdout: str) -> tuple[str, str]:
    epochs = [line.strip() for line in stdout.splitlines() if re.match(r"\s*epoch\s+\d+\s+train loss", line)]
    return "pass", epochs[-1] if epochs else "trained (no epoch line seen)"


def _profile(s: Settings) -> list[str]:
    code = "import sys; from scaleq.bench.gpu_check import profile_main; profile_main(sys.argv[1:])"
    return [sys.executable, "-c", code, s.device, "quick" if s.quick else "full", str(s.out)]


def _judge_profile(stdout: str) -> tuple[str, str]:
    lines = [line.strip() for line in stdout.splitlines() if line.startswith("per step:")]
    return "pass", " | ".join(lines) or "profiled"


PARTS_SHARE = {"pytest": 0.08, "bench_gpu": 0.18, "large_graph": 0.50, "deepspeed": 0.16, "profile": 0.08}
PARTS = (
    Part("pytest", True, PARTS_SHARE["pytest"], _pytest, _judge_pytest),
    Part("bench_gpu", True, PARTS_SHARE["bench_gpu"], _bench_gpu, _judge_wrote),
    Part("large_graph", True, PARTS_SHARE["large_graph"], _large_graph, _judge_large_graph),
    Part("deepspeed", False, PARTS_SHARE["deepspeed"], _deepspeed, _judge_deepspeed),
    Part("profile", True, PARTS_SHARE["profile"], _profile, _judge_profile),
)


# -- running them ----------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def run_part(part: Part, s: Settings, limit_s: float) -> Outcome:
    """One part in a child process, at most ``limit_s`` seconds; its full output to the log folder."""
    started = time.monotonic()
    logs = s.out / "gpu_check_logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        command = part.command(s)
    except Exception as error:  # the part could not even start (a missing launcher, a failed conversion)
        return Outcome(part.name, part.needs_cuda, "fail", time.monotonic() - started, f"{type(error).__name__}: {error}")
    child = run_child(command, env=child_env(), timeout_s=max(1.0, limit_s - (time.monotonic() - started)), lines=6)
    seconds = time.monotonic() - started
    (logs / f"{part.name}.log").write_text(f"$ {' '.join(command)}\n\n{child.stdout}\n{child.error or ''}\n")
    if not child.ok:
        return Outcome(part.name, part.needs_cuda, "fail", seconds, child.error or "failed")
    status, detail = part.judge(child.stdout)
    return Outcome(part.name, part.needs_cuda, status, seconds, detail)


def run_check(device: str = "cuda", *, quick: bool = False, budget_s: float = 480.0, out: Path = Path("bench"),
              work: Path | None = None, parts: list[str] | None = None) -> list[Outcome]:
    """Every part in order (or those named in ``parts``), each within its share of ``budget_s``
    plus what earlier parts left; prints one line per finished part."""
    import tempfile

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        s = Settings(device, quick, budget_s, out, Path(work or scratch).resolve())
        carried = 0.0
        for part in PARTS:
            if parts is not None and part.name not in parts:
                continue
            allowance = budget_s * part.share + carried
            outcome = run_part(part, s, allowance)
            carried = max(0.0, allowance - outcome.seconds)
            outcomes.append(outcome)
            first = (outcome.detail.splitlines() or [""])[0]
            print(f"  {outcome.part:12s} {outcome.status:7s} {outcome.seconds:6.0f} s  {first}", flush=True)
    write_rows([{"part": o.part, "needs_cuda": o.needs_cuda, "status": o.status, "seconds": round(o.seconds, 1),
                 "detail": o.detail.replace("\n", " | "), "device": device} for o in outcomes], out / "gpu_check.csv")
    return outcomes


def summary(outcomes: list[Outcome], device: str, budget_s: float) -> str:
    """One screen: pass/fail/skipped per part, which parts need CUDA, and why a part failed."""
    used = sum(o.seconds for o in outcomes)
    lines = [f"gpu-check on {device}: {used:.0f} s of a {budget_s:.0f} s budget", "",
             f"{'part':12s} {'needs CUDA':10s} {'status':8s} {'seconds':>7s}  detail"]
    for o in outcomes:
        first, *rest = o.detail.splitlines() or [""]
        lines.append(f"{o.part:12s} {'yes' if o.needs_cuda else 'no':10s} {o.status:8s} {o.seconds:7.0f}  {first[:140]}")
        lines += [f"{'':42s}{line[:120]}" for line in rest[-6:]]
    if device != "cuda":
        lines += ["", "On a CPU the parts marked 'needs CUDA' only show that they still run; their numbers mean "
                      "something on a GPU (make gpu-check there)."]
    counts = {status: sum(o.status == status for o in outcomes) for status in ("pass", "fail", "skipped")}
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts.items())]
    return "\n".join(lines)


# -- the profiler part (runs in its own process) ---------------------------------------------------


def profile_step(model_name: str, device: str, quick: bool) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One training step (graph build, forward, loss, backward, Adam) of EGNN or FastEGNN-<3,0.75>,
    profiled after two warm-up steps: the top 10 ops by device time (CPU time on a CPU) and counts
    per step of host reads of device values (aten::_local_scalar_dense, i.e. .item() / bool()),
    cudaStreamSynchronize calls and device-to-host copies."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scaleq.bench.gpu import CAP, NEIGHBOURS, StepVariant, _build_model
    from scaleq.bench.models import Workload, random_particles
    from scaleq.config import LossConfig
    from scaleq.graph.builder import GraphBuilder
    from scaleq.losses import training_loss

    torch.manual_seed(0)
    work = Workload(graphs=1, nodes=300 if quick else 100_000, neighbours=NEIGHBOURS)
    fast = model_name == "fastegnn"
    variant = StepVariant(model_name, model_name, {"virtual_nodes": 3} if fast else {})
    model = _build_model(variant).to(device)
    raw = random_particles(work).to(device)
    builder = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=CAP, edge_drop=0.75 if fast else 0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    loss_config = LossConfig(mmd_weight=0.01) if fast else LossConfig()

    def step() -> None:
        batch = builder(raw)  # the graph is built inside the step, as in training
        loss, _ = training_loss(model(batch), batch, loss_config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        if device == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()

    def device_us(event: Any) -> float:  # noqa: ANN401
        return float(getattr(event, "self_device_time_total", 0.0) or getattr(event, "self_cuda_time_total", 0.0))

    if device == "cuda":
        timed = [(e.key, device_us(e), e.count) for e in events if device_us(e) > 0]
    else:
        timed = [(e.key, float(e.self_cpu_time_total), e.count) for e in events if not e.key.startswith("ProfilerStep")]
    timed.sort(key=lambda row: -row[1])
    counts = {
        "stream_syncs": sum(e.count for e in events if e.key == "cudaStreamSynchronize"),
        "dtoh_copies": sum(e.count for e in events if "DtoH" in e.key),  # "Memcpy DtoH (Device -> Pinned)"
        # .item() / bool() on a tensor of any device (Adam's step counters live on the CPU)
        "scalar_reads": sum(e.count for e in events if e.key == "aten::_local_scalar_dense"),
    }
    edges = int(builder(raw).edge_index.shape[1])
    rows = [{"model": model_name, "kind": "top" if device == "cuda" else "top (CPU time)", "name": name[:120],
             "device_ms": round(us / 1000, 3), "calls": calls, "nodes": work.nodes, "edges": edges, "device": device}
            for name, us, calls in timed[:10]]
    rows += [{"model": model_name, "kind": "count per step", "name": key, "device_ms": None, "calls": value,
              "nodes": work.nodes, "edges": edges, "device": device} for key, value in counts.items()]
    return rows, counts


def profile_main(argv: list[str]) -> None:
    """Entry of the profile part's child: ``device quick|full out``."""
    import torch

    from scaleq.bench.gpu import device_slug

    device, size, out = argv
    rows = []
    for model_name in ("egnn", "fastegnn"):
        model_rows, counts = profile_step(model_name, device, size == "quick")
        rows += model_rows
        top = [r for r in model_rows if r["kind"].startswith("top")][:5]
        print(f"{model_name}: " + "; ".join(f"{r['name'][:40]} {r['device_ms']:.2f} ms x{r['calls']}" for r in top))
        print(f"per step: {model_name} " + " ".join(f"{k}={v}" for k, v in counts.items()))
    slug = device_slug(torch.device(device))
    write_rows(rows, Path(out) / f"profile_{slug}.csv", PROFILE_COLUMNS)
    print(f"wrote {Path(out) / f'profile_{slug}.csv'}")
