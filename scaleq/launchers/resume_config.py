"""The config a resumed run continues with: its own ``config.yaml``, plus only the changes that
leave what its checkpoints hold valid.

A checkpoint holds weights, optimizer moments, the sampler's position and the RNG states of one
config. Continuing it under another model, optimizer, data or seed would either fail to load
(shapes) or, worse, load and silently train something that neither config describes. So a resume
starts from the run's ``config.yaml``; the keys in :data:`RESUMABLE_KEYS` (how long, how often,
where, how loudly) may change and each change is logged; any other change is refused in one line
that names each key with its saved and its requested value.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from scaleq.config import Config, ConfigError, load_config
from scaleq.data.splits import data_as_used
from scaleq.run_directory import RunDirectory
from scaleq.train.checkpoint import nothing_to_resume

# The one list of keys a resume may change: none of them changes what a checkpoint holds or how
# its tensors are shaped, and none changes the samples or the steps already taken.
RESUMABLE_KEYS = frozenset({
    "train.epochs",  # train longer (or stop sooner)
    "train.patience",
    "train.eval_every",
    "train.progress",
    "train.device",
    "train.rollout_every",
    "train.finite_check_every",
    "train.checkpoint_every_steps",
    "data.path",  # the same store, moved or copied (another one of other shapes fails the checkpoint's check)
    "data.num_workers",  # loader processes: the same samples in the same order
    "data.eval_batch_size",  # evaluation only
    "engine.max_failures",  # Ray: restarts, cores per worker, placement
    "engine.cpus_per_worker",
    "engine.placement_strategy",
    "engine.socket_ifname",  # how the ranks reach each other on the machines of this launch
    "engine.peer_timeout_s",
})
# Keys that say where the run is (they found it), compared as resolved paths where they are paths.
LOCATION_KEYS = frozenset({"name", "out_dir"})
PATH_KEYS = frozenset({"data.path", "engine.ray_storage"})


def run_config_path(config: Config) -> Path:
    return RunDirectory(Path(config.out_dir) / config.name).config


def require_something_to_resume(config: Config) -> None:
    """``--resume`` continues a run; with no checkpoint at ``<out_dir>/<name>`` there is none, and
    starting a full-size run instead (a typo in ``name``, a forgotten ``out_dir``) is a surprise
    found hours later. So it is an error; ``--resume-or-start`` asks for the lenient form.

    Raises CheckpointError naming the directory looked in."""
    run_dir = Path(config.out_dir) / config.name
    if not RunDirectory(run_dir).last.exists():
        raise nothing_to_resume(run_dir)


def config_for_resume(located: Config, overrides: list[str], *, from_file: bool,
                      log: Callable[[str], None] = print) -> Config:
    """The config to resume ``<out_dir>/<name>`` with (``located``: the requested config, which
    names the run). ``from_file``: a config file was given, and all of ``located`` is what is
    asked for; else the run's ``config.yaml`` with ``overrides`` applied. A run without a
    ``config.yaml`` (nothing to resume) keeps ``located``.

    Raises ConfigError naming every key that changed and may not.
    """
    saved_path = run_config_path(located)
    if not saved_path.is_file():
        return located
    saved = load_config(saved_path)
    # the saved config's data.generate describes the stores the run read (scaleq.data.splits.data_as_used)
    requested = data_as_used(located) if from_file else load_config(saved_path, overrides)
    changes = config_changes(saved, requested)
    refused = {key: change for key, change in changes.items() if key not in RESUMABLE_KEYS}
    if refused:
        listed = ", ".join(f"{key} (saved {old!r}, requested {new!r})" for key, (old, new) in refused.items())
        raise ConfigError(
            f"{saved_path}: --resume cannot change {listed}: the run's checkpoints were made with the saved "
            f"value{'s' if len(refused) > 1 else ''}; drop {'these overrides' if len(refused) > 1 else 'this override'} "
            "to continue the run, or start a new one (another name=)"
        )
    for key, (old, new) in changes.items():
        log(f"resume: {key} changed from {old!r} to {new!r}")
    return requested


def config_changes(saved: Config, requested: Config) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (saved, requested)} for every key whose value differs, in config order;
    the run's location is not compared, paths compare resolved."""
    old, new = flatten(saved.to_dict()), flatten(requested.to_dict())
    changes = {}
    for key in [*old, *(k for k in new if k not in old)]:
        if key in LOCATION_KEYS:
            continue
        a, b = old.get(key), new.get(key)
        if key in PATH_KEYS and a is not None and b is not None:
            same = Path(a).resolve() == Path(b).resolve()
        else:
            same = a == b
        if not same:
            changes[key] = (a, b)
    return changes


def flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections as dotted keys; the model's options are keys of ``model``."""
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
