"""A damaged DeepSpeed checkpoint (one rank's ZeRO shard cut short), resumed through the CLI on 2
ranks: every rank refuses together with the same `error:` line naming it and exit 2, none waits in
a collective; `--resume-from best` is the way out and trains to the end. A shard carrying a pickle
payload (with a matching digest) is refused before DeepSpeed's full-pickle loader opens it."""

from __future__ import annotations

import re

import pytest
import torch

from scaleq.train.metrics import read_metrics
from tests.support.stores import tiny_nbody_dataset
from tests.train.test_kill_matrix import end_or_kill, start, write_config

pytestmark = [pytest.mark.slow, pytest.mark.deepspeed]


def test_a_damaged_deepspeed_checkpoint_is_one_line_and_best_resumes(tmp_path):
    data = tiny_nbody_dataset(tmp_path / "data", train=8, valid=4, test=4)
    config = write_config(tmp_path / "ds.yaml", data, tmp_path / "runs", "ds", {"kind": "deepspeed", "zero_stage": 2})
    first = start(config, 2)
    assert end_or_kill(first) == 0, first.stderr.read()[-3000:]
    checkpoints = tmp_path / "runs" / "ds" / "checkpoints"
    shard = sorted((checkpoints / "last.pt.ds").rglob("*rank_1*optim_states.pt"))[-1]  # rank 1's ZeRO shard
    shard.write_bytes(shard.read_bytes()[:500])

    damaged = start(config, 2, "--resume", "train.epochs=3")
    code = end_or_kill(damaged)
    stderr = damaged.stderr.read()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code != 0 and errors, stderr[-3000:]
    # the ranks refused with exit 2 (torchrun may stop the second one first, -15) and no traceback
    # of their own; torchrun's summary of failed ranks follows, as for any failed torchrun job
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", stderr)
    assert "2" in codes and set(codes) <= {"2", "-15"}, stderr[-3000:]
    assert not re.search(r"\[rank\d\]: Traceback", stderr), stderr[-3000:]
    assert len(set(errors)) == 1, errors  # the same one line, from each rank
    assert re.match(r"error: \S+/checkpoints/last\.pt: checkpoint is damaged or unreadable .*--resume-from best",
                    errors[0]), errors[0]

    resumed = start(config, 2, "--resume-from", "best", "train.epochs=3")
    assert end_or_kill(resumed) == 0, resumed.stderr.read()[-3000:]
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "ds" / "metrics.csv")] == ["1", "2", "3"]


def test_a_deepspeed_shard_carrying_a_payload_is_refused_before_deepspeed_opens_it(tmp_path):
    from scaleq.digests import record_digest
    from scaleq.train.checkpoint import CheckpointError, read_model_state
    from tests.train.test_safe_checkpoints import Payload

    data = tiny_nbody_dataset(tmp_path / "data", train=8, valid=4, test=4)
    config = write_config(tmp_path / "ds.yaml", data, tmp_path / "runs", "ds", {"kind": "deepspeed", "zero_stage": 2})
    first = start(config, 1)
    assert end_or_kill(first) == 0, first.stderr.read()[-3000:]
    checkpoints = tmp_path / "runs" / "ds" / "checkpoints"
    shard = sorted((checkpoints / "last.pt.ds").rglob("*optim_states.pt"))[-1]
    marker = tmp_path / "created-by-the-payload"
    state = torch.load(shard, weights_only=False)  # our own file, written by the run above
    state["payload"] = Payload(marker)
    torch.save(state, shard)
    record_digest(shard)  # a matching digest: only the safe unpickler stands in the way

    resumed = start(config, 1, "--resume", "train.epochs=3")
    code = end_or_kill(resumed)
    stderr = resumed.stderr.read()
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert errors[0] == (f"error: {shard}: refused: loading it would create 'io.open', which is not checkpoint data "
                         "(tensors, numbers, strings, plain containers); nothing from the file was run"), errors[0]
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(shard))}: refused"):
        read_model_state(checkpoints / "last.pt")
    assert not marker.exists()
