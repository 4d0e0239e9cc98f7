"""A damaged DeepSpeed checkpoint (one rank's ZeRO shard cut short), resumed through the CLI on 2
ranks: every rank refuses together with the same `error:` line naming it and exit 2, none waits in
a collective; `--resume-from best` is the way out and trains to the end."""

from __future__ import annotations

import re

import pytest

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
