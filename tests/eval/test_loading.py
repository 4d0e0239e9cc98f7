import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from scaleq.config import config_from_dict, save_config
from scaleq.eval.loading import load_run
from scaleq.models import DataWidths, build_model
from scaleq.run import run
from scaleq.store.format import StoreAttrs, Trajectory
from scaleq.store.writer import write_store
from scaleq.train.checkpoint import CheckpointError, load_weights
from tests.support.stores import random_walk_trajectories

ROOT = Path(__file__).resolve().parents[2]


def two_feature_dataset(root: Path) -> Path:
    """train/valid/test stores whose particles carry two features, 'charge' and 'type'."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("valid", 4), ("test", 4)):
        trajectories = []
        for t in random_walk_trajectories(count, 6, 8, seed=len(split)):
            features = np.stack([rng.choice([-1.0, 1.0], 8), rng.integers(0, 4, 8)], axis=1).astype(np.float32)
            trajectories.append(Trajectory(positions=t.positions, node_features=features))
        write_store(root / f"{split}.zarr", StoreAttrs(kind="synthetic", dim=3, dt=1.0,
                                                       feature_names=["charge", "type"]), trajectories)
    return root


def test_plot_clusters_works_on_a_run_that_keeps_a_subset_of_node_features(tmp_path):
    data = two_feature_dataset(tmp_path / "data")
    config = config_from_dict({
        "name": "eghn_subset", "out_dir": str(tmp_path / "runs"),
        "data": {"path": str(data), "delta": 2, "input_frame": 2, "batch_size": 4, "node_features": ["charge"]},
        "graph": {"kind": "complete", "local": "knn", "local_k": 2},
        "model": {"name": "eghn", "hidden": 8, "clusters": 2, "interaction_layers": 1, "pooling_layers": 1,
                  "decoder_layers": 1},
        "train": {"epochs": 1, "progress": False, "eval_every": 1},
    })
    summary = run(config)
    loaded = load_run(summary.run_dir)
    assert loaded.model.training is False
    # h = [|v|, charge]; edge_attr = [charge_i charge_j, |x_i - x_j|^2]: the store's 'type' is left out
    assert build_model(config, loaded.datasets["train"]).state_dict().keys() == loaded.model.state_dict().keys()
    out = tmp_path / "clusters.png"
    result = subprocess.run([sys.executable, "launch/plot_clusters.py", "--run", summary.run_dir, "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert matplotlib.image.imread(out).shape[0] > 100


def test_build_model_reads_the_widths_from_the_data(tmp_path):
    config = config_from_dict({"data": {"path": "-"}, "model": {"name": "egnn", "hidden": 8, "layers": 1}})
    model = build_model(config, DataWidths(num_node_features=3, num_node_attr=2, dim=3))
    assert model.embed.in_features == 3
    assert model.layers[0].phi_e[0].in_features == 2 * 8 + 1 + 3  # h_i, h_j, |x_i - x_j|^2, edge_attr (2 + 1)


def test_bad_checkpoints_fail_with_one_line_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="best.pt: checkpoint not found"):
        load_weights(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="best.pt: not a readable torch checkpoint"):
        load_weights(tmp_path)
    torch.save({"weights": {}}, tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError, match="not a scaleq checkpoint"):
        load_weights(tmp_path)
    with pytest.raises(CheckpointError, match="config.yaml: not found"):
        load_run(tmp_path)


def test_a_checkpoint_of_another_model_is_refused_with_one_line(tmp_path):
    data = two_feature_dataset(tmp_path / "data")
    config = config_from_dict({"name": "x", "data": {"path": str(data), "delta": 2},
                               "model": {"name": "egnn", "hidden": 8, "layers": 1}})
    save_config(config, tmp_path / "config.yaml")
    other = build_model(config_from_dict({"data": {"path": "-"}, "model": {"name": "egnn", "hidden": 4, "layers": 1}}),
                        DataWidths(3, 2, 3))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"model": other.state_dict()}, tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(CheckpointError) as err:
        load_run(tmp_path)
    assert "does not fit the model" in str(err.value) and "\n" not in str(err.value)


def deepspeed_save(rank: int, world_size: int, port: int, stage: int, path: str) -> None:
    """Rank ``rank`` of a DeepSpeed run: one Adam step on its shard of the batch, then a checkpoint."""
    from scaleq.distributed import make_engine
    from scaleq.distributed.spawn import rank_env
    from scaleq.losses import position_mse
    from tests.support.distributed import rank_shard, tiny_model

    rank_env(rank, world_size, port)
    engine = make_engine("deepspeed", device="cpu", micro_batch_size=8 // world_size, zero_stage=stage, lr=LR,
                         weight_decay=0.0, config_overrides={"optimizer": {"params": {"eps": EPS}}})
    wrapped = engine.wrap(tiny_model(), None)
    batch = rank_shard(rank, world_size)
    engine.backward(position_mse(wrapped(batch)["pos"], batch.target))
    engine.step()
    engine.save(Path(path), {"note": "deepspeed"})
    engine.close()


LR, EPS = 1e-2, 1e-3  # eps near the gradients' size: Adam's first step then depends on their scale


@pytest.mark.deepspeed
@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_deepspeed_and_torch_checkpoints_load_to_the_same_weights(tmp_path, stage):
    """One Adam step from the same weights on the same batch: with the torch engine in one process,
    and with DeepSpeed on 2 ranks that each see half of it (ZeRO-3 leaves only placeholders in the
    model file; the weights are consolidated from both ranks' shards when read)."""
    from deepspeed.comm.torch import build_shm_op

    from scaleq.distributed import make_engine
    from scaleq.distributed.process_group import free_port
    from scaleq.distributed.spawn import spawn
    from scaleq.losses import position_mse
    from tests.support.distributed import tiny_model, whole_batch

    build_shm_op()  # compiled (once per machine) here, not inside the ranks' time limit
    spawn(deepspeed_save, 2, free_port(), stage, str(tmp_path / "deepspeed" / "checkpoints" / "best.pt"))
    engine = make_engine("torch", device="cpu")
    model = tiny_model()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = engine.wrap(model, torch.optim.Adam(model.parameters(), lr=LR, eps=EPS))
    batch = whole_batch()
    engine.backward(position_mse(wrapped(batch)["pos"], batch.target))
    engine.step()
    engine.save(tmp_path / "torch" / "checkpoints" / "best.pt", {"note": "torch"})
    engine.close()

    shards = list((tmp_path / "deepspeed" / "checkpoints").glob("best.pt.ds/*/zero_pp_rank_*optim_states.pt"))
    assert len(shards) == (2 if stage else 0)
    torch_state, deepspeed_state = load_weights(tmp_path / "torch"), load_weights(tmp_path / "deepspeed")
    assert torch_state.keys() == deepspeed_state.keys() == initial.keys()
    for name, value in torch_state.items():
        torch.testing.assert_close(deepspeed_state[name], value, atol=2e-6, rtol=0)
    assert sum(not torch.equal(torch_state[k], initial[k]) for k in initial) > len(initial) // 2
