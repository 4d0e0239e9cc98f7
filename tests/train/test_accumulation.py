"""Gradient accumulation in the loop: a run cut at a checkpoint and resumed ends with the weights
of an uninterrupted run, when the epoch's micro-batches do not fill whole windows."""

from pathlib import Path

import pytest
import torch

from scaleq.config import config_from_dict
from scaleq.run import run
from scaleq.train.checkpoint import load_weights
from scaleq.train.metrics import read_metrics
from scaleq.train.trainer import Trainer
from tests.support.stores import tiny_nbody_dataset

TRAIN, BATCH, ACCUMULATION = 20, 4, 2  # 5 micro-batches per epoch: windows of 2, 2 and 1


def config(tmp_path, data_path):
    return config_from_dict({
        "name": "acc",
        "out_dir": str(tmp_path / "runs"),
        "seed": 0,
        "data": {"path": str(data_path), "input_frame": 30, "delta": 10, "velocity": "store", "batch_size": BATCH},
        "model": {"name": "egnn", "hidden": 8, "layers": 1},
        "engine": {"gradient_accumulation": ACCUMULATION},
        # a checkpoint after every optimizer step: 3 per epoch, the last one at the epoch's end
        "train": {"epochs": 3, "lr": 3e-3, "eval_every": 1, "patience": 100, "progress": False,
                  "device": "cpu", "checkpoint_every_steps": 1},
    })


@pytest.fixture(scope="module")
def nbody(tmp_path_factory):
    return tiny_nbody_dataset(tmp_path_factory.mktemp("nbody"), train=TRAIN, valid=8, test=8)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, nbody):
    summary = run(config(tmp_path_factory.mktemp("full"), nbody))
    return Path(summary.run_dir)


class Killed(BaseException):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("epoch, batch_in_epoch", [
    (1, 0),  # the end of epoch 1, right after its short last window
    (1, 2),  # mid-epoch 2, after its first window
    (0, 5),  # the mid-epoch checkpoint after epoch 1's last micro-batch, before its end-of-epoch one
])
def test_resume_from_a_checkpoint_ends_with_the_weights_of_an_uninterrupted_run(
    tmp_path, nbody, uninterrupted, monkeypatch, epoch, batch_in_epoch
):
    save, saved = Trainer.save, []

    def save_then_die(self, name):
        save(self, name)
        saved.append((self.state.epoch, self.state.batch_in_epoch, self.state.step))
        if (self.state.epoch, self.state.batch_in_epoch) == (epoch, batch_in_epoch):
            raise Killed

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(Killed):
        run(config(tmp_path, nbody))
    monkeypatch.setattr(Trainer, "save", save)
    # checkpoints fall only between windows: after micro-batch 2, 4 or 5 of an epoch (or at its start)
    assert saved and {batches for _, batches, _ in saved} <= {0, 2, 4, 5}
    resumed = Path(run(config(tmp_path, nbody), resume=True).run_dir)

    full_weights, resumed_weights = load_weights(uninterrupted, "last.pt"), load_weights(resumed, "last.pt")
    for name, value in full_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-6, rtol=0, msg=lambda m, n=name: f"{n}: {m}")
    state = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)["extra"]["state"]
    assert state["step"] == 3 * 3  # optimizer steps, not micro-batches
    rows = {"full": read_metrics(uninterrupted / "metrics.csv"), "cut": read_metrics(resumed / "metrics.csv")}
    assert [float(r["train_loss"]) for r in rows["cut"]] == pytest.approx(
        [float(r["train_loss"]) for r in rows["full"]], rel=1e-5)
