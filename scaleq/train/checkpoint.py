"""What a checkpoint holds besides model and optimizer (files are written by the engine, atomically)."""

from __future__ import annotations

import os
import random
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaleq.run_directory import BEST, RunDirectory


@dataclass
class TrainState:
    """Where training stands: enough, with model and optimizer, to continue exactly.

    No position inside a gradient accumulation window is kept: checkpoints are written only
    between windows (the engines check), and windows restart every epoch, so the next window starts
    at ``batch_in_epoch`` in the resumed run as in the uninterrupted one."""

    epoch: int = 0  # the epoch in progress (or the next one, when batch_in_epoch == 0)
    batch_in_epoch: int = 0  # batches (micro-batches) of ``epoch`` already trained on
    step: int = 0  # optimizer steps so far
    best_val_mse: float = float("inf")
    best_epoch: int = -1
    test_mse_at_best: float = float("nan")
    epochs_without_improvement: int = 0
    # Sums over the batches of ``epoch`` trained so far, all ranks together: [loss, *LOSS_PARTS
    # (scaleq.losses), batches]. Restored on resume, so the epoch's train loss counts every batch.
    epoch_sums: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read (truncated, damaged, or not a scaleq checkpoint), or does not
    fit the model its run's config builds."""


_SIZE_MISMATCH = re.compile(r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
                            r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)")
_MISSING = re.compile(r'Missing key\(s\) in state_dict: "([^"]+)"')
_UNEXPECTED = re.compile(r'Unexpected key\(s\) in state_dict: "([^"]+)"')


def state_dict_mismatch(err: BaseException) -> str | None:
    """The first tensor that keeps a checkpoint from loading into the model (torch's
    ``load_state_dict`` refusal, under any engine), in words; None when ``err`` is not that."""
    text = str(err)
    if "Error(s) in loading state_dict" not in text:
        if "doesn't match the size of optimizer's group" in text:
            return "its optimizer state has parameter groups of other sizes than the model's"
        return None
    found = [(m.start(), m) for m in (p.search(text) for p in (_SIZE_MISMATCH, _MISSING, _UNEXPECTED)) if m]
    if not found:
        return text.strip().splitlines()[-1].strip()
    match = min(found, key=lambda item: item[0])[1]
    if match.re is _SIZE_MISMATCH:
        return f"tensor '{match[1]}' is {match[2]} in the checkpoint, {match[3]} in the model"
    if match.re is _MISSING:
        return f"the model has a tensor '{match[1]}' that the checkpoint lacks"
    return f"the checkpoint has a tensor '{match[1]}' that the model lacks"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in the checkpoint file ``path`` (on the CPU), whichever engine wrote it:
    the torch engine's ``{"model": state_dict, ...}``, or the DeepSpeed engine's pointer to its
    ``<name>.ds/<tag>/`` folder (consolidated over ranks and ZeRO shards in scaleq.distributed)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (has the run saved one yet?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which, not where in pickle it broke
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    # imported here: the reader imports deepspeed only to consolidate ZeRO shards
    from scaleq.distributed.deepspeed_checkpoint import deepspeed_model_state, is_pointer

    if is_pointer(state):
        try:
            return deepspeed_model_state(path, state)
        except FileNotFoundError as err:
            raise CheckpointError(str(err)) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: not a scaleq checkpoint (expected a dict with a 'model' state dict)")
    return state["model"]


def unreadable_part(path: Path) -> str | None:
    """Why the checkpoint ``path`` cannot be read, found without loading it (None: it looks whole):
    the zip directory of the file, and for a DeepSpeed pointer the zip directory of every file in
    its tag folder, every rank's shards included. One process checks this before a multi-rank
    resume, so that every rank refuses a damaged shard together instead of the one that owns it
    failing while the others wait in DeepSpeed's collectives."""
    try:
        with zipfile.ZipFile(path):
            pass
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files raise many types
        return f"{type(err).__name__}: {str(err).strip()[:200]}"
    from scaleq.distributed.deepspeed_checkpoint import is_pointer

    if not is_pointer(state):
        return None
    tag_dir = path.parent / str(state["folder"]) / str(state["tag"])
    files = sorted(tag_dir.glob("*.pt")) if tag_dir.is_dir() else []
    if not files:
        return f"its DeepSpeed folder {tag_dir} is missing or empty"
    for file in files:
        try:
            with zipfile.ZipFile(file):
                pass
        except (OSError, zipfile.BadZipFile) as err:
            return f"{file.relative_to(path.parent)}: {err}"
    return None


def load_weights(run_dir: str | os.PathLike[str], checkpoint: str = BEST) -> dict[str, torch.Tensor]:
    """The model state dict of ``<run_dir>/checkpoints/<checkpoint>`` (torch or DeepSpeed format)."""
    return read_model_state(RunDirectory(run_dir).checkpoint(checkpoint))
