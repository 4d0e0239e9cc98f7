"""Reading DeepSpeed checkpoints back into one plain model state dict (no engine, one process).

DeepSpeedEngine.save writes ``<name>.ds/<tag>/`` (every rank's files) and a small pointer file
``<name>`` naming the folder and tag. ZeRO stage 0 keeps the whole model in
``mp_rank_00_model_states.pt``; stages 1-3 split the fp32 master weights across the ranks'
``*_optim_states.pt`` files (under ZeRO-3 the model-states file holds only placeholders), which
DeepSpeed's own ``zero_to_fp32`` consolidates.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scaleq.extras import require

POINTER_FORMAT = "scaleq-deepspeed-checkpoint"
MODEL_STATES = "mp_rank_00_model_states.pt"


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
    return dict(torch.load(files[0], map_location="cpu", weights_only=False)["module"])

