"""Reading DeepSpeed checkpoints back into one plain model state dict (no engine, one process).

DeepSpeedEngine.save writes ``<name>.ds/<tag>/`` (every rank's files) and a small pointer file
``<name>`` naming the folder and tag. ZeRO stage 0 keeps the whole model in
``mp_rank_00_model_states.pt``; stages 1-3 split the fp32 master weights across the ranks'
``*_optim_states.pt`` files (under ZeRO-3 the model-states file holds only placeholders), which
DeepSpeed's own ``zero_to_fp32`` consolidates.

DeepSpeed's loaders unpickle with full pickle, so every file of a tag folder is first checked by
scaleq's safe loader (:func:`check_tag_files`: its digest, and a ``weights_only`` unpickling that
allows the few DeepSpeed types its files hold) before DeepSpeed opens any of them.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from torch import Tensor

from scaleq.digests import SUFFIX, record_digest
from scaleq.extras import require
from scaleq.safe_load import check_file, safe_load

POINTER_FORMAT = "scaleq-deepspeed-checkpoint"
MODEL_STATES = "mp_rank_00_model_states.pt"


def deepspeed_safe_globals() -> list[Any]:
    """The types DeepSpeed pickles into its checkpoint files besides tensors and plain containers
    (ZeRO's stage enum, the loss scaler's settings, fragment addresses of the fp32 partitions):
    plain records, allowed explicitly to the safe loader."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def tag_files(tag_dir: Path) -> list[Path]:
    """The checkpoint files of a tag folder (every rank's), sorted. Digests and the hidden
    temporaries of writes in progress are left out: the ranks list the folder while the others
    already write their digests there, and must all see the same list to share it out."""
    if not tag_dir.is_dir():
        return []
    return sorted(p for p in tag_dir.iterdir()
                  if p.is_file() and not p.name.endswith(SUFFIX) and not p.name.startswith("."))


def record_tag_digests(tag_dir: Path, rank: int, world_size: int) -> None:
    """Every rank hashes its share of the tag folder's files (round robin over the sorted list,
    once every rank has written its own) and records each file's digest beside it."""
    for i, path in enumerate(tag_files(tag_dir)):
        if i % world_size == rank:
            record_digest(path)


def check_tag_files(tag_dir: Path) -> None:
    """Check every file of a tag folder before DeepSpeed opens one: its digest (DigestError) and
    that it unpickles as data (UnsafeFileError); damaged files raise what torch raises."""
    files = tag_files(tag_dir)
    if not files:
        raise FileNotFoundError(f"{tag_dir}: the DeepSpeed checkpoint folder is missing or empty")
    allowed = deepspeed_safe_globals()
    for path in files:
        check_file(path, allowed)


def is_pointer(state: Any) -> bool:
    """Whether a loaded checkpoint file is the pointer to a DeepSpeed checkpoint folder."""
    return isinstance(state, dict) and state.get("format") == POINTER_FORMAT


def deepspeed_model_state(pointer_path: Path, pointer: dict[str, Any]) -> dict[str, Tensor]:
    """The full fp32 model state dict of the DeepSpeed checkpoint ``pointer`` (read from
    ``pointer_path``) names, on the CPU, whatever the ZeRO stage and number of ranks it was saved with."""
    folder = pointer_path.parent / str(pointer["folder"])
    tag_dir = folder / str(pointer["tag"])
    if not tag_dir.is_dir():
        raise FileNotFoundError(f"{pointer_path}: points to {tag_dir}, which does not exist")
    check_tag_files(tag_dir)
    if any(tag_dir.glob("zero_pp_rank_*_optim_states.pt")):  # written under ZeRO stages 1-3 only
        require("deepspeed", "reading a DeepSpeed checkpoint")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints one line per parameter group
            state = get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=str(pointer["tag"]))
        return {k: v.detach().clone() for k, v in state.items()}
    files = sorted(tag_dir.glob("mp_rank_*_model_states.pt"))
    if not files:
        raise FileNotFoundError(f"{tag_dir}: no {MODEL_STATES} (not a complete DeepSpeed checkpoint)")
    return dict(safe_load(files[0], allowed=deepspeed_safe_globals())["module"])

