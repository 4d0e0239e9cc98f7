"""What a checkpoint holds besides model and optimizer (files are written by the engine, atomically)."""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scaleq.digests import DigestError, sha256_file
from scaleq.run_directory import BEST, RunDirectory
from scaleq.safe_load import UnsafeFileError, check_file, load_checkpoint_file, safe_load


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
    """Every RNG's state as tensors and plain containers (what the safe loader reads: no NumPy
    array, whose unpickling needs NumPy's globals)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]  # keys: a tensor, or an array in older checkpoints
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_model_state(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in the checkpoint file ``path`` (on the CPU), whichever engine wrote it:
    the torch engine's ``{"model": state_dict, ...}``, or the DeepSpeed engine's pointer to its
    ``<name>.ds/<tag>/`` folder (consolidated over ranks and ZeRO shards in scaleq.distributed).
    Every file is checked against its digest and unpickled as data only (scaleq.safe_load)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (has the run saved one yet?)")
    try:
        state = load_checkpoint_file(path, on_missing_digest=warn_no_digest)
    except (DigestError, UnsafeFileError) as err:
        raise CheckpointError(str(err)) from None
    except Exception as err:  # a truncated or foreign file: say which, not where in pickle it broke
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})") from None
    # imported here: the reader imports deepspeed only to consolidate ZeRO shards
    from scaleq.distributed.deepspeed_checkpoint import deepspeed_model_state, is_pointer

    if is_pointer(state):
        try:
            return deepspeed_model_state(path, state)
        except (DigestError, UnsafeFileError, FileNotFoundError) as err:
            raise CheckpointError(str(err)) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path}: not a scaleq checkpoint (expected a dict with a 'model' state dict)")
    return state["model"]


def nothing_to_resume(run_dir: Path) -> CheckpointError:
    """The refusal of a ``--resume`` that finds no checkpoint in ``run_dir`` (a typo in ``name``, a
    forgotten ``out_dir``): starting a full-size run instead is a surprise found hours later."""
    last = RunDirectory(run_dir).last
    found = f"exists but holds no {last.relative_to(run_dir)}" if run_dir.is_dir() else "does not exist"
    return CheckpointError(
        f"{run_dir}: nothing to resume (the run directory {found}); check name= and out_dir=, or pass "
        "--resume-or-start to start a new run there when there is nothing to continue"
    )


def warn_no_digest(path: Path) -> None:
    warnings.warn(f"{path}: carries no SHA-256 digest (written before checkpoints had one): damage to it cannot "
                  "be detected", stacklevel=2)


def fingerprint(path: Path) -> str:
    """What this process sees at ``path``: "no checkpoint", or the SHA-256 of the file (and of
    DeepSpeed's ``latest`` tag beside it), so that ranks can tell whether they see the same one."""
    if not path.is_file():
        return "no checkpoint"
    seen = sha256_file(path)
    tag = Path(f"{path}.ds") / "latest"
    if tag.is_file():  # the pointer names its tag; two nodes may hold the same pointer over different shards
        seen = hashlib.sha256(f"{seen} {tag.read_bytes().hex()}".encode()).hexdigest()
    return f"sha256 {seen[:12]}"


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint ``path`` must not be loaded, as one line naming the file (None: it is
    whole): a digest that does not match, a pickle that asks for more than data, a file that cannot
    be read, and for a DeepSpeed pointer the same for every file of its tag folder, every rank's
    shards included. Tensor data is only mapped, not read. One process checks this before a
    multi-rank resume, so that every rank refuses a damaged shard together instead of the one that
    owns it failing while the others wait in DeepSpeed's collectives."""
    from scaleq.distributed.deepspeed_checkpoint import check_tag_files, is_pointer

    current = path
    try:
        check_file(path)
        state = safe_load(path)
        if is_pointer(state):
            current = path.parent / str(state["folder"]) / str(state["tag"])
            check_tag_files(current)
    except UnsafeFileError as err:  # not damage: a file that would run code is refused as such
        return str(err)
    except Exception as err:  # digests, truncated or foreign files (torch raises many types)
        text = " ".join(str(err).split())
        if isinstance(err, DigestError):  # its message names the file: say it relative to the checkpoint
            reason = text.replace(f"{path.parent}/", "")
        else:
            where = "" if current == path else f"{current.relative_to(path.parent)}: "
            reason = f"{where}{type(err).__name__}: {text[:200]}"
        return (f"{path}: checkpoint is damaged or unreadable ({reason}); resume from another with --resume-from "
                "best (or a path), or start a new run")
    return None


def load_weights(run_dir: str | os.PathLike[str], checkpoint: str = BEST) -> dict[str, torch.Tensor]:
    """The model state dict of ``<run_dir>/checkpoints/<checkpoint>`` (torch or DeepSpeed format)."""
    return read_model_state(RunDirectory(run_dir).checkpoint(checkpoint))
