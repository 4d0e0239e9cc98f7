"""engine.graph_parallel: the key, its checks, and the engine's 2-D grid of ranks."""

import pytest
import torch

from scaleq.config import ConfigError, config_from_dict
from scaleq.distributed.process_group import Ranks, graph_parallel_group


def _raw(**engine):
    return {"data": {"path": "somewhere"}, "engine": engine}


def test_graph_parallel_defaults_to_one_and_is_checked():
    assert config_from_dict(_raw()).engine.graph_parallel == 1
    assert config_from_dict(_raw(graph_parallel=4)).engine.graph_parallel == 4
    with pytest.raises(ConfigError, match="engine.graph_parallel must be >= 1"):
        config_from_dict(_raw(graph_parallel=0))


def test_eghn_and_local_graphs_are_refused_under_graph_parallelism():
    raw = _raw(graph_parallel=2) | {"model": {"name": "eghn"}, "graph": {"local": "knn"}}
    with pytest.raises(ConfigError, match="not supported for model 'eghn'"):
        config_from_dict(raw)
    raw = _raw(graph_parallel=1) | {"model": {"name": "eghn"}, "graph": {"local": "knn"}}
    assert config_from_dict(raw).model.name == "eghn"  # fine without graph parallelism


def test_graph_parallel_must_divide_the_ranks():
    with pytest.raises(ValueError, match="must be >= 1 and divide the number of ranks"):
        graph_parallel_group(Ranks(rank=0, world_size=6), 4)
    assert graph_parallel_group(Ranks(rank=0, world_size=1), 1) is None


def test_single_process_engine_keeps_whole_graphs_and_one_shard():
    from scaleq.distributed import TorchEngine
    from scaleq.graph.builder import GraphBuilder
    from tests.support.stores import random_batch

    engine = TorchEngine(device="cpu")
    assert (engine.graph_parallel, engine.data_rank, engine.data_world_size) == (1, 0, 1)
    batch = engine.prepare_batch(random_batch(), GraphBuilder(kind="complete"))
    assert getattr(batch, "halo", None) is None and batch.pos.shape[0] == 19
    with pytest.raises(ValueError, match="divide the number of ranks"):
        TorchEngine(device="cpu", graph_parallel=2)
    assert torch.equal(batch.batch, torch.repeat_interleave(torch.arange(3), torch.tensor([5, 8, 6])))
