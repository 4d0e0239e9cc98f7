"""Run the training loop in Ray Train workers (TorchTrainer), on one machine or a cluster.

A launcher sits above the loop (it imports ``scaleq.train``; the loop and the engines never import
it). Ray itself is imported only inside the functions that use it, so that ``launch/train.py`` can
ask :func:`inside_ray_job` without loading Ray.

Each worker runs the same :func:`scaleq.run.run` as a plain process; Ray has already made
the process group, so the engine (torch DDP or DeepSpeed) joins it. Every end-of-epoch checkpoint
is reported with ``ray.train.report`` and lands in ``RunConfig(storage_path, name)``. A worker
that dies makes Ray restart the group (``FailureConfig(max_failures)``); the new workers find the
last reported checkpoint with ``ray.train.get_checkpoint()`` and continue from it. A group that
lost a node waits until the cluster can place it again, and says for what
(:mod:`scaleq.launchers.ray_waiting`). Rerunning with
``--resume`` uses the same RunConfig name and storage path, which is how Ray Train V2 resumes;
``--resume-from best`` (or a path) starts the new launch from that checkpoint instead of the one
Ray reported last, and a restart inside that launch from what the launch itself reported.

A worker's ConfigError, StoreError, CheckpointError, OSError, ... (:mod:`scaleq.launchers.failures`)
reaches the driver as that same exception (:func:`worker_error`), so ``launch/train.py`` prints the
same one line and exit code as a run without Ray.

Paths are made absolute on the driver: workers run in Ray's own working directories. The run
directory must be on a filesystem every node sees (one machine, or a shared mount).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaleq.config import Config, config_from_dict
from scaleq.data.splits import prepare_data
from scaleq.digests import SUFFIX as DIGEST_SUFFIX
from scaleq.digests import copy_with_digest
from scaleq.distributed import engine_from_config
from scaleq.extras import require
from scaleq.launchers.failures import exit_code
from scaleq.models import check_buildable
from scaleq.run import resolve_run_dir, run
from scaleq.run_directory import CHECKPOINT_NAMES, RunDirectory
from scaleq.train.trainer import EpochEnd

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Names, inside a reported checkpoint, the launch (one driver's fit) that reported it.
LAUNCH_FILE = "scaleq-launch.txt"
# Set in the entrypoint of `ray job submit` (the job supervisor passes the job's config in it).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def inside_ray_job() -> bool:
    """True in a process started by `ray job submit -- ...`."""
    return RAY_JOB_ENV in os.environ


def runtime_env() -> dict[str, Any]:
    """Workers import scaleq from this checkout."""
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path}}


def connect(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS); with neither, join the cluster running on
    this machine or start one."""
    require("ray", "the Ray launcher")
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"), runtime_env=runtime_env())


def absolute_paths(config: Config) -> Config:
    data = dataclasses.replace(config.data, path=str(Path(config.data.path).resolve()))
    engine = config.engine
    if engine.ray_storage is not None:
        engine = dataclasses.replace(engine, ray_storage=str(Path(engine.ray_storage).resolve()))
    return dataclasses.replace(config, data=data, engine=engine, out_dir=str(Path(config.out_dir).resolve()))


def make_trainer(config: Config, *, resume: bool = False, resume_from: str | None = None,
                 regenerate_data: bool = False) -> Any:
    """A TorchTrainer for ``config`` (call ``.fit()``); ScalingConfig etc. from ``config.engine``.
    ``resume_from``: 'last', 'best' or a checkpoint path for the first start of the workers;
    ``regenerate_data``: replace the stores at ``data.path`` (as ``--regenerate-data``)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from scaleq.launchers.ray_backend import RoutedTorchConfig
    from scaleq.launchers.ray_waiting import SayWhatItWaitsFor

    config = absolute_paths(check_buildable(config))  # a wrong model key fails on the driver, not in every worker
    # once, on the driver; the workers' run header says where the data came from
    origin = prepare_data(config.data, progress=config.train.progress, regenerate=regenerate_data)
    resume = resume or resume_from is not None
    run_dir = resolve_run_dir(config, resume)
    if resume_from is not None and resume_from not in CHECKPOINT_NAMES:
        resume_from = str(Path(resume_from).resolve())  # workers run in directories of their own
    e = config.engine
    resources = {"CPU": e.cpus_per_worker, **({"GPU": e.gpus_per_worker} if e.use_gpu else {})}
    return TorchTrainer(
        train_worker,
        torch_config=RoutedTorchConfig(socket_ifname=e.socket_ifname),
        train_loop_config={"config": config.to_dict(), "run_dir": str(run_dir), "resume": resume,
                           "resume_from": resume_from, "launch": uuid.uuid4().hex, "data_origin": origin},
        scaling_config=ScalingConfig(
            num_workers=e.workers, use_gpu=e.use_gpu, resources_per_worker=resources,
            placement_strategy=e.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_dir.name,
            storage_path=e.ray_storage or str(Path(config.out_dir) / "ray"),
            failure_config=FailureConfig(max_failures=e.max_failures),
            callbacks=[SayWhatItWaitsFor(e.workers, resources, e.placement_strategy)],
        ),
    )


def run_with_ray(config: Config, *, resume: bool = False, resume_from: str | None = None,
                 address: str | None = None, regenerate_data: bool = False) -> dict[str, Any]:
    """Train ``config`` in ``config.engine.workers`` Ray Train workers; the final metrics. A
    worker's user error or run failure is raised here as the worker raised it."""
    require("ray", "the Ray launcher")
    import ray

    joined = ray.is_initialized()
    connect(address)
    trainer = make_trainer(config, resume=resume, resume_from=resume_from, regenerate_data=regenerate_data)
    try:
        result = trainer.fit()
        error = result.error  # older Ray Train returns the failure instead of raising it
    except Exception as err:
        error = err
    if error is None:
        return dict(result.metrics or {})
    original = worker_error(error)
    if original is None:
        raise error
    if not joined:  # a Ray this call started: stopped now, so its forwarded worker logs end before the error line
        ray.shutdown()
    raise original from None


def worker_error(err: BaseException) -> BaseException | None:
    """The first error a worker raised that :mod:`scaleq.launchers.failures` knows (a user error or
    a run failure), found inside Ray's wrappers (worker failures by rank, causes); None if none."""
    seen: set[int] = set()
    todo: list[Any] = [err]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if exit_code(item) is not None and not type(item).__module__.startswith("ray."):
            return item
        failures = getattr(item, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(failures[rank] for rank in sorted(failures))
        todo.extend([getattr(item, "cause", None), item.__cause__, item.__context__])
    return None


# -- inside each worker ----------------------------------------------------------------------


def train_worker(loop_config: dict[str, Any]) -> None:
    """The function every Ray Train worker runs."""
    import ray.train
    import ray.train.torch

    config = config_from_dict(loop_config["config"], "<ray train_loop_config>")
    run_dir = Path(loop_config["run_dir"])
    paths = RunDirectory(run_dir)
    engine = engine_from_config(config, device=str(ray.train.torch.get_device()))
    resume, resume_from, launch = loop_config["resume"], loop_config.get("resume_from"), loop_config.get("launch")
    checkpoint = ray.train.get_checkpoint()
    if not resume and paths.last.exists():
        # A fresh launch's directory was made empty by the driver: a checkpoint in it was written
        # by this launch's earlier group, killed before Ray registered its report (a restart).
        resume = True
    if checkpoint is not None:  # a restart after a failure, or a rerun of the same RunConfig
        with checkpoint.as_directory() as folder:
            restart = _launch_of(Path(folder)) == launch
            # an earlier launch's checkpoint does not override an explicit --resume-from
            if engine.is_main and (restart or resume_from is None):
                _restore(Path(folder), paths.checkpoints)
        engine.barrier()
        resume = True
        if restart:  # within this launch: continue from what it reported last
            resume_from = None
    def report(end: EpochEnd) -> None:  # every end-of-epoch checkpoint, as Ray Train's report
        _report(end.engine.is_main, end.checkpoint, end.metrics, launch)

    try:
        summary = run(config, resume=resume, engine=engine, run_dir=run_dir, resume_from=resume_from,
                      on_epoch_end=[report], data_origin=loop_config.get("data_origin"))
    except Exception as err:
        if exit_code(err) is None:
            raise
        # the driver prints this error's one line: Ray's log of it needs no chain of causes
        err.__cause__, err.__suppress_context__ = None, True
        raise err.with_traceback(None) from None
    # Result.metrics are those of the last report with a checkpoint: attach the final one.
    _report(engine.is_main, paths.last, {"done": 1, **dataclasses.asdict(summary)}, launch)


def _report(is_main: bool, path: Path, metrics: dict[str, Any], launch: str | None = None) -> None:
    """Every worker reports; rank 0 attaches a copy of the checkpoint (``last.pt`` and, for
    DeepSpeed, ``last.pt.ds/``) so that later writes to the run directory cannot change it, and
    the id of the launch that wrote it."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="scaleq-ckpt-") as tmp:
        checkpoint = None
        if is_main:
            for item in path.parent.glob(path.name + "*"):
                copy = shutil.copytree if item.is_dir() else shutil.copy2
                copy(item, Path(tmp) / item.name)
            (Path(tmp) / LAUNCH_FILE).write_text(launch or "")
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, int | float | str)}, checkpoint=checkpoint)


def _launch_of(folder: Path) -> str | None:
    """The launch that reported the checkpoint in ``folder`` (None: written before launches had ids)."""
    marker = folder / LAUNCH_FILE
    return marker.read_text() if marker.is_file() else None


def _restore(source: Path, target: Path) -> None:
    """Copy a reported checkpoint into the run directory: folders (DeepSpeed shards) first, the
    pointer file (``last.pt``) last and atomically with its digest, so a crash here leaves no
    half-made checkpoint. The resume that follows checks digests and safe loading (scaleq.run)."""
    target.mkdir(parents=True, exist_ok=True)
    for item in sorted(source.iterdir(), key=lambda p: p.is_file()):
        if item.name == LAUNCH_FILE or item.name.endswith(DIGEST_SUFFIX):  # a digest travels with its file
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            copy_with_digest(item, target / item.name)


# -- any function in Ray Train workers (the scaling benchmark) -------------------------------------


def run_in_workers(
    fn: Callable[[dict[str, Any]], dict[str, float]],
    loop_config: dict[str, Any],
    *,
    workers: int,
    nodes: int = 1,
    address: str | None = None,
    use_gpu: bool = False,
    storage: str,
    name: str,
) -> dict[str, Any]:
    """Run ``fn(loop_config)`` in ``workers`` Ray Train workers (their process group made) and
    return rank 0's numbers. Without ``address`` the workers run on ``nodes`` simulated nodes of
    this machine (``ray.cluster_utils.Cluster``, spread one per node); with it, on that cluster."""
    require("ray", "running in Ray Train workers")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from scaleq.launchers.ray_backend import RoutedTorchConfig

    cluster = None
    if address:
        ray.init(address=address, runtime_env=runtime_env())
    else:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": workers // nodes, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=workers // nodes)
        ray.init(address=cluster.address, runtime_env=runtime_env(), log_to_driver=False)
    try:
        trainer = TorchTrainer(
            _reporting_worker,
            torch_config=RoutedTorchConfig(),  # on several machines: the interface that routes to the master
            train_loop_config={"fn": fn, "config": loop_config},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                         placement_strategy="STRICT_SPREAD" if nodes > 1 else "PACK"),
            run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve())),
        )
        return dict(trainer.fit().metrics)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


def _reporting_worker(loop_config: dict[str, Any]) -> None:
    import ray.train
    import torch.distributed as dist

    results = loop_config["fn"](loop_config["config"])
    is_main = not dist.is_initialized() or dist.get_rank() == 0
    # Ray Train V2 keeps the metrics of reports that carry a checkpoint: rank 0 attaches an empty one.
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = ray.train.Checkpoint.from_directory(folder) if is_main else None
        ray.train.report(results, checkpoint=checkpoint)
