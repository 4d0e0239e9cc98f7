"""Typed run configuration: dataclasses, strict YAML loading, dotted command-line overrides.

A YAML file maps onto :class:`Config`. Unknown keys, wrong types, values out of range and
combinations of keys that cannot run together are errors that name the keys and the file, raised
when the file loads. ``extends: other.yaml`` (relative to the file) starts from another config and
deep-merges this one over it. Overrides such as ``train.lr=1e-3`` are parsed as YAML values and
applied before validation, so they are checked like the file.

This module is a leaf: it imports no torch, models or data code, so reading a config is cheap and
cannot fail on a missing GPU library. The ``model`` section holds ``name`` plus that model's
constructor arguments; those are checked against the constructor by
:func:`scaleq.models.build.check_buildable`, next to the models, which every run calls before it
starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from scaleq.graph.options import (
    Backend,
    EdgeAttrKind,
    EdgeDropMode,
    GraphKind,
    LocalKind,
    choices,
)
from scaleq.io import atomic_write_text
from scaleq.sample_options import VelocitySource, check_sample_options

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names which."""


@dataclass(kw_only=True)
class GenerateConfig:
    """How to create the dataset when ``data.path`` does not exist (only the N-body simulator)."""

    source: Literal["nbody"] = "nbody"  # the generator: the charged-particle N-body simulator
    # the simulator: EGNN's 5-body one, or FastEGNN's 100-body system of GMN (scaleq/sources/nbody.py)
    system: Literal["egnn", "fastegnn"] = "egnn"
    gaussians: int | None = None  # fastegnn: Gaussians of the initial positions (None: 3, as published)
    particles: int = 5  # bodies per system
    train: int = 3000  # training trajectories kept
    train_drawn: int | None = None  # initial states drawn for training; EGNN draws 10000, keeps 3000
    valid: int = 2000  # validation trajectories
    test: int = 2000  # test trajectories
    steps: int = 5000  # simulator steps per trajectory
    seed: int = 43  # one RNG for all three splits (43: EGNN's published initial conditions)

    def __post_init__(self) -> None:
        for name in ("particles", "train", "valid", "test", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.generate.{name} must be >= 1, got {getattr(self, name)}")
        if self.gaussians is not None and (self.system != "fastegnn" or self.gaussians not in (1, 3, 10)):
            raise ConfigError(f"data.generate.gaussians must be 1, 3 or 10 with system 'fastegnn', got "
                              f"{self.gaussians} with system {self.system!r}")
        if self.train_drawn is not None and self.train_drawn < self.train:
            raise ConfigError(f"data.generate.train_drawn ({self.train_drawn}) must be >= data.generate.train "
                              f"({self.train}): the training trajectories are kept out of those drawn")


@dataclass(kw_only=True)
class DataConfig:
    """Where the samples come from and how they are batched."""

    # directory holding train.zarr, valid.zarr and test.zarr (generated when missing and ``generate`` is set; a
    # generate override that disagrees with an existing store exits with 2, --regenerate-data replaces it)
    path: str
    delta: int = 10  # the target is frame t + delta of the input frame t
    input_frame: int | None = None  # one fixed input frame per trajectory (None: see starts_per_trajectory)
    starts_per_trajectory: int | None = None  # random input frames per trajectory, seeded (None and no input_frame: every frame)
    velocity: VelocitySource = "backward"  # 'store' (its velocities), 'backward' x[t] - x[t-1] or 'forward' x[t+1] - x[t]
    max_train_samples: int | None = None  # use at most this many training samples (None: all)
    max_eval_samples: int | None = None  # at most this many validation and test samples (None: all)
    batch_size: int = 100  # graphs per batch and rank
    eval_batch_size: int | None = None  # graphs per evaluation batch (None: batch_size)
    num_workers: int = 0  # DataLoader worker processes per rank, at most the cores this process may use
    node_features: list[str] | None = None  # store features to keep, by name (None: all)
    generate: GenerateConfig | None = None  # how to create the dataset when path does not exist

    def __post_init__(self) -> None:
        try:
            check_sample_options(delta=self.delta, input_frame=self.input_frame,
                                 starts_per_trajectory=self.starts_per_trajectory, velocity=self.velocity, prefix="data.")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        for name in ("eval_batch_size", "max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.node_features is not None and (not self.node_features or len(set(self.node_features)) != len(self.node_features)):
            raise ConfigError(f"data.node_features must be a non-empty list of distinct names, got {self.node_features}")


@dataclass(frozen=True, kw_only=True)
class GraphConfig:
    """How every batch's graph is built (:class:`scaleq.graph.builder.GraphBuilder` extends this
    class with the building itself, so an option is added here and nowhere else)."""

    kind: GraphKind = "complete"  # 'complete' (every pair of a graph) or 'radius' (pairs closer than radius)
    radius: float | None = None  # cutoff of a radius graph, in the store's units
    max_num_neighbors: int = 64  # cap per node: the nearest ones are kept (a warning says when)
    # radius-graph search: 'auto' (cell list on CUDA and for periodic boxes, torch-cluster on CPU),
    # 'torch_cluster' or 'cell_list' (O(N), CPU and CUDA)
    backend: Backend = "auto"
    periodic: bool = False  # periodic boxes from the store's bounds (minimum image; batch.edge_shift)
    edge_drop: float = 0.0  # fraction of each graph's edges to drop (FastEGNN's p; 1.0: none left)
    edge_drop_mode: EdgeDropMode = "shortest"  # 'shortest' keeps the shortest (published), 'random' redraws each step
    # A second, local graph for hierarchical models (EGHN's E-Pool), as batch.local_index:
    # 'bonds' (the store's static edges), 'knn' (local_k nearest), 'radius' (local_radius) or 'none'.
    local: LocalKind = "none"
    local_k: int = 4  # neighbours per node of a 'knn' local graph
    local_radius: float | None = None  # cutoff of a 'radius' local graph
    # edge attributes: 'egnn' [q_i q_j, |x_i - x_j|^2] or 'distance' |x_i - x_j| (FastEGNN's datasets)
    edge_attr: EdgeAttrKind = "egnn"

    def __post_init__(self) -> None:
        # scaleq.graph.builder.GraphBuilder is a GraphConfig too: the options and their rules are
        # defined here once, and checked for a builder made without a config as well
        try:
            self._check()
        except ValueError as err:
            raise ConfigError(f"graph: {err}") from None

    def _check(self) -> None:
        """Raise ValueError naming the first option, or combination, that cannot make a graph."""
        kind, backend, periodic, local = self.kind, self.backend, self.periodic, self.local
        if self.edge_attr not in get_args(EdgeAttrKind):
            raise ValueError(f"edge_attr must be {choices(EdgeAttrKind)}, got {self.edge_attr!r}")
        if kind not in get_args(GraphKind):
            raise ValueError(f"graph kind must be {choices(GraphKind)}, got {kind!r}")
        if kind == "radius" and (self.radius is None or self.radius <= 0):
            raise ValueError(f"a radius graph needs a radius > 0, got {self.radius}")
        if self.max_num_neighbors < 1:
            raise ValueError(f"max_num_neighbors must be >= 1, got {self.max_num_neighbors}")
        if backend not in get_args(Backend):
            raise ValueError(f"graph backend must be {choices(Backend)}, got {backend!r}")
        if periodic and kind != "radius":
            raise ValueError("periodic boxes need a radius graph (graph.kind 'radius')")
        if periodic and backend == "torch_cluster":
            raise ValueError("periodic boxes need graph.backend 'cell_list' or 'auto': torch-cluster has none")
        if periodic and local in ("knn", "radius"):
            raise ValueError(f"a periodic graph cannot have a {local!r} local graph (it would need its own "
                             "edge shifts): use graph.local 'bonds' or 'none'")
        if not 0.0 <= self.edge_drop <= 1.0:
            raise ValueError(f"edge_drop must be in [0, 1], got {self.edge_drop}")
        if self.edge_drop_mode not in get_args(EdgeDropMode):
            raise ValueError(f"edge_drop_mode must be {choices(EdgeDropMode)}, got {self.edge_drop_mode!r}")
        if local not in get_args(LocalKind):
            raise ValueError(f"local graph must be {choices(LocalKind)}, got {local!r}")
        if local == "knn" and self.local_k < 1:
            raise ValueError(f"a k-nearest local graph needs local_k >= 1, got {self.local_k}")
        if local == "radius" and (self.local_radius is None or self.local_radius <= 0):
            raise ValueError(f"a radius local graph needs local_radius > 0, got {self.local_radius}")


@dataclass(kw_only=True)
class ModelConfig:
    """``name`` in scaleq.models.MODELS and keyword arguments of its constructor. Both need the model
    classes, so :func:`scaleq.models.build.check_buildable` checks them, not this leaf module.

    The message-passing options every graph model takes (scaleq.nn.block_options):
    ``kernel: auto`` (default) runs the plain torch path while the edge activations fit in the
    device's free memory and the chunked, recomputing path (chunks sized from free memory) when
    they do not; Triton runs only with ``kernel: triton`` (why: the measurements in
    docs/large-graphs.md, "The rule of kernel: auto"). ``kernel: torch`` does exactly what
    ``edge_chunk`` says. ``edge_chunk``: 0 (default: all
    edges at once, unless ``kernel: auto`` finds they do not fit), K > 0 (chunks of about K
    edges) or ``auto`` (chunked, K from free memory).
    """

    name: str = "egnn"  # a key of scaleq.models.MODELS; the other model: keys are its constructor's arguments
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class LossConfig:
    """Weights of the auxiliary loss terms; the position MSE always has weight 1."""

    # FastEGNN's MMD between virtual nodes and sampled predicted positions (0: off)
    mmd_weight: float = 0.0  # lambda
    mmd_sigma: float = 1.0  # kernel width
    mmd_kernel: Literal["plain", "squared"] = "plain"  # exp(-|a-b| / 2 sigma^2) (published) or |a-b|^2
    mmd_samples_per_virtual: int = 3  # real nodes sampled per graph: this times C (published: 3)
    # EGHN: lambda * ||rownorm(S^T A_local S) - I||_F per graph, averaged (published lambda: 2)
    connectivity_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.mmd_weight < 0 or self.mmd_sigma <= 0 or self.mmd_samples_per_virtual < 1:
            raise ConfigError(
                "loss.mmd_weight must be >= 0, loss.mmd_sigma > 0 and loss.mmd_samples_per_virtual >= 1, got "
                f"{self.mmd_weight}, {self.mmd_sigma}, {self.mmd_samples_per_virtual}"
            )
        if self.connectivity_weight < 0:
            raise ConfigError(f"loss.connectivity_weight must be >= 0, got {self.connectivity_weight}")


@dataclass(kw_only=True)
class EngineConfig:
    """How a step is taken (``kind``) and, under Ray, how many workers take it.

    torch: one process, or DistributedDataParallel when launched with several ranks (torchrun,
    the deepspeed launcher, Ray Train workers). deepspeed: ``deepspeed.initialize`` with a config
    generated from this section and ``train`` (ZeRO stage, bf16 autocast, accumulation, clipping,
    Adam/AdamW). ``data.batch_size`` is per rank: the global batch is batch_size x ranks x
    gradient_accumulation.
    """

    kind: Literal["torch", "deepspeed"] = "torch"  # torch: one process or DDP; deepspeed: deepspeed.initialize
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0-3
    offload_optimizer: bool = False  # DeepSpeed: optimizer states on the CPU (ZeRO >= 1)
    gradient_accumulation: int = 1  # micro-batches per optimizer step (an epoch's shorter last window is stepped too)
    # ranks that share each graph (spatial partition + halo exchange); ranks = graph_parallel x
    # data-parallel groups, every graph_parallel consecutive ranks one group
    graph_parallel: int = 1
    # Ray Train (``ray job submit -- python launch/train.py`` or ``--launcher ray``):
    workers: int = 2  # Ray Train workers (ranks)
    use_gpu: bool = False  # one GPU share per worker
    cpus_per_worker: float = 1.0  # CPUs Ray reserves per worker
    gpus_per_worker: float = 1.0  # used when use_gpu
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"  # how Ray places the workers on nodes
    max_failures: int = 0  # worker-group restarts from the last checkpoint (-1: unlimited)
    ray_storage: str | None = None  # RunConfig.storage_path (default: <out_dir>/ray)
    # several machines: the interface the ranks talk over (default: the one that routes to MASTER_ADDR;
    # GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME override both)
    socket_ifname: str | None = None
    # seconds a rank that stopped answering is waited for before every rank stops (a rank that fails
    # with an error stops the others in ~2 s)
    peer_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 <= self.zero_stage <= 3:
            raise ConfigError(f"engine.zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.gradient_accumulation < 1:
            raise ConfigError(f"engine.gradient_accumulation must be >= 1, got {self.gradient_accumulation}")
        if self.graph_parallel < 1:
            raise ConfigError(f"engine.graph_parallel must be >= 1, got {self.graph_parallel}")
        if self.workers < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker <= 0:
            raise ConfigError("engine.workers must be >= 1 and engine.cpus_per_worker/gpus_per_worker > 0")
        if self.peer_timeout_s < 5:
            raise ConfigError(f"engine.peer_timeout_s must be >= 5 (heartbeats are 2 s apart), got {self.peer_timeout_s}")
        if self.max_failures < -1:
            raise ConfigError(f"engine.max_failures must be >= -1, got {self.max_failures}")
        if self.kind == "torch" and (self.zero_stage or self.offload_optimizer):
            raise ConfigError("engine.zero_stage and engine.offload_optimizer need engine.kind: deepspeed")


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: how long, how fast, how often it evaluates and saves, on what device."""

    epochs: int = 100  # training epochs (at most: patience may stop earlier)
    lr: float = 5e-4  # learning rate
    weight_decay: float = 1e-12  # the optimizer's weight decay
    optimizer: Literal["adam", "adamw"] = "adam"  # adam: L2 weight decay (the papers); adamw: decoupled
    eval_every: int = 5  # epochs between validations (and best-checkpoint checks)
    patience: int = 100  # epochs without a better validation MSE before stopping
    grad_clip: float | None = None  # clip the gradient norm to this (None: off)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast of the invariant MLPs (coordinates stay fp32)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when there is one
    checkpoint_every_steps: int = 0  # also save mid-epoch, every N optimizer steps (0: only at each epoch's end)
    # Optimizer steps between reads of the on-device NaN/inf flag of the loss (also read at every epoch end
    # and before every checkpoint): larger means fewer host syncs, more steps run after a NaN.
    finite_check_every: int = 50
    progress: bool = True  # progress bars on rank 0
    rollout_every: int = 0  # every N epochs, roll out validation trajectory 0 into rollouts/ (0: off)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.eval_every < 1 or self.patience < 1:
            raise ConfigError("train.epochs, train.eval_every and train.patience must be >= 1")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.finite_check_every < 1:
            raise ConfigError(f"train.finite_check_every must be >= 1, got {self.finite_check_every}")
        if self.rollout_every < 0:
            raise ConfigError(f"train.rollout_every must be >= 0 (0: off), got {self.rollout_every}")


@dataclass(kw_only=True)
class Config:
    """One experiment: where it runs and from what seed, and one section per component."""

    name: str = "run"  # the run directory's name, under out_dir
    out_dir: str = "runs"  # where run directories are made
    seed: int = 0  # seeds Python, NumPy and torch before the model is built
    data: DataConfig
    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # the model's own support is its class attribute ``supports_graph_parallel``, which
        # scaleq.models.check_model_fits reads; a local graph (EGHN's) is global per graph whatever the model
        if self.engine.graph_parallel > 1 and self.graph.local != "none":
            raise ConfigError(
                f"engine.graph_parallel = {self.engine.graph_parallel} is not supported for model {self.model.name!r} "
                f"with graph.local {self.graph.local!r}: EGHN's pooling and local graph are global per graph; "
                "set engine.graph_parallel to 1"
            )
        if self.engine.graph_parallel > 1 and self.loss.connectivity_weight > 0:
            raise ConfigError(
                f"loss.connectivity_weight = {self.loss.connectivity_weight} is not supported with engine.graph_parallel "
                f"= {self.engine.graph_parallel}: EGHN's connectivity loss is global per graph; set one of them to its "
                "default (0, 1)"
            )

    def to_dict(self) -> dict[str, Any]:
        raw = dataclasses.asdict(self)
        raw["model"] = {"name": self.model.name, **self.model.options}
        return raw


# -- loading ---------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (default: configs/default.yaml), apply overrides, validate."""
    file = Path(path) if path is not None else DEFAULT_CONFIG
    raw = _read_yaml(file, seen=())
    for item in overrides or []:
        _check_override_key(item)  # a typo on the command line is blamed on the command line, not the file
        _apply_override(raw, item)
    return config_from_dict(raw, str(file))


def did_you_mean(key: str, known: list[str]) -> str:
    """' (did you mean 'x'?)' for the nearest of ``known`` to ``key``, '' when none is near."""
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_override_key(item: str) -> None:
    """ConfigError naming the command line when ``item``'s key is not a config key (the model's
    own keys, under ``model.``, are checked against its constructor by check_buildable)."""
    key = item.partition("=")[0]
    cls: Any = Config
    done: list[str] = []
    for part in key.split("."):
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or (cls is ModelConfig):
            return  # below a leaf, or the model's free-form options
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names and f"{'.'.join([*done, part])}" not in MOVED_KEYS:
            prefix = "".join(f"{d}." for d in done)
            raise ConfigError(f"command line: unknown key '{key}'"
                              f"{did_you_mean(prefix + part, [prefix + n for n in names])} (known in "
                              f"{prefix.rstrip('.') or 'the top level'}: {', '.join(names)})")
        if part not in names:
            return
        hint = typing.get_type_hints(cls)[part]
        options = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        cls = options[0] if len(options) == 1 else None
        done.append(part)


def config_from_dict(raw: dict[str, Any], where: str = "<config>") -> Config:
    """Validate a plain dict (as read from YAML) into a Config; errors name ``where``."""
    try:
        model = raw.get("model", {})
        if not isinstance(model, dict):
            raise ConfigError(f"key 'model' must be a mapping, got {type(model).__name__}")
        model = dict(model)
        raw = {**raw, "model": {"name": model.pop("name", "egnn"), "options": model}}
        return _build(Config, raw, "")
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def config_yaml(config: Config) -> str:
    """The fully resolved config, every default filled in, as YAML that loads back to it."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write the fully resolved config (atomically), so the run can be repeated from it."""
    atomic_write_text(path, config_yaml(config))


def _read_yaml(file: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    if file.resolve() in seen:
        raise ConfigError(f"{file}: 'extends' forms a cycle")
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{file}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a mapping at the top level, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base = _read_yaml(file.parent / str(parent), seen + (file.resolve(),))
    model, base_model = raw.get("model"), base.get("model")
    if isinstance(model, dict) and isinstance(base_model, dict):
        if model.get("name", base_model.get("name", "egnn")) != base_model.get("name", "egnn"):
            base = {**base, "model": {}}  # another model: the parent's model options do not apply
    return _deep_merge(base, raw)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(text)


# Keys that were merged into another: a config naming the old one is told the new one.
MOVED_KEYS = {  # old key: (new key, why)
    "engine.activation_checkpointing": ("model.gradient_checkpointing", "one knob for every engine: the model "
                                        "checkpoints every k of its layers the same way under torch, DDP and DeepSpeed"),
}


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"key '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if f"{prefix}{key}" in MOVED_KEYS:
            new, why = MOVED_KEYS[f"{prefix}{key}"]
            raise ConfigError(f"'{prefix}{key}' is now '{new}' ({why})")
        if key not in names:
            nearest = did_you_mean(f"{prefix}{key}", [prefix + n for n in names])
            raise ConfigError(f"unknown key '{prefix}{key}'{nearest} (known: {', '.join(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{prefix}{f.name}'")
            continue
        values[f.name] = check_type(raw[f.name], hints[f.name], f"{prefix}{f.name}")
    try:
        return cls(**values)
    except ConfigError as err:
        raise ConfigError(str(err)) from None
    except ValueError as err:
        raise ConfigError(f"{prefix.rstrip('.')}: {err}") from None


def check_type(value: Any, hint: Any, key: str) -> Any:
    """``value`` as a value of type ``hint`` (numbers read as strings, such as 5e-4, become floats);
    ConfigError naming ``key`` when it is not one."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return check_type(value, option, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"key '{key}': {value!r} matches none of {args}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"key '{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"key '{key}' must be a list, got {type(value).__name__} {value!r}")
        return [check_type(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"key '{key}' must be a mapping, got {type(value).__name__}")
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{key}.")
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"key '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"key '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if hint is float:
        # PyYAML reads 5e-4 (no dot) as a string: accept anything that parses as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"key '{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"key '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"key '{key}': unsupported type {hint}")
