"""The block's options and the rule behind "auto": plain where the edges fit, chunked where not,
Triton only when asked for."""

import pytest
import torch

from scaleq.config import ConfigError, ModelConfig
from scaleq.device_memory import free_memory
from scaleq.models import EGNN, FastEGNN
from scaleq.models.build import model_options
from scaleq.nn.block_options import (
    CHUNK_SHARE,
    MIN_CHUNK,
    PLAIN_HEADROOM,
    check_block_options,
    chunk_rows,
)
from scaleq.nn.edge_layout import EdgeLayout
from scaleq.nn.message_passing import layout_chunk, resolve_kernel
from tests.support.block_paths import assert_paths_agree
from tests.support.stores import random_batch

GB = 2**30


def test_explicit_options_are_taken_as_they_are():
    assert chunk_rows("torch", 0, 10**9, 1000, None) == 0
    assert chunk_rows("auto", 5000, 10**9, 1000, None) == 5000
    assert chunk_rows("triton", 0, 10**9, 1000, None) == 0


def test_auto_kernel_runs_plain_while_the_edges_fit_and_chunks_when_not():
    edges, row = 2_000_000, 64 * 4 * 12
    fits = edges * row * PLAIN_HEADROOM
    assert chunk_rows("auto", 0, edges, row, fits) == 0
    # just short of the headroom: chunked, in one chunk (recomputed in backward, nothing kept per edge)
    assert chunk_rows("auto", 0, edges, row, fits - 1) == edges
    chunk = chunk_rows("auto", 0, edges, row, edges * row)  # one layer's activations would take it all
    assert chunk == int(edges * row * CHUNK_SHARE) // row == edges // 4
    assert chunk_rows("auto", 0, edges, row, 1) == MIN_CHUNK  # never below the launch-overhead floor


def test_auto_edge_chunk_sizes_chunks_from_free_memory():
    row = 1000
    assert chunk_rows("torch", "auto", 10**8, row, 4 * GB) == int(4 * GB * CHUNK_SHARE) // row
    assert chunk_rows("auto", "auto", 10_000, row, 100 * GB) == 10_000  # one chunk when all fit
    with pytest.raises(ValueError, match="free memory"):
        chunk_rows("auto", 0, 10, row, None)


def test_triton_runs_only_when_asked_for():
    assert resolve_kernel("auto", torch.zeros(1, 3)) is False
    assert resolve_kernel("torch", torch.zeros(1, 3)) is False


def test_free_memory_is_positive_on_the_cpu():
    assert free_memory(torch.device("cpu")) > 0


def test_the_decision_is_taken_once_per_layout():
    layout = EdgeLayout.build(torch.randint(0, 10, (2, 50)), 10, torch.zeros(50, 0))
    first = layout_chunk(layout, "torch", "auto", 1000)
    assert first == 50  # a tiny graph: one chunk of all edges
    layout._cache[("chunk", "torch", "auto", 1000)] = 7  # what a layer decided earlier
    assert layout_chunk(layout, "torch", "auto", 1000) == 7  # later layers (and recomputation) follow it


@pytest.mark.parametrize("value", [-1, 1.5, True, "big"])
def test_bad_edge_chunk_is_refused(value):
    with pytest.raises(ValueError, match="edge_chunk must be"):
        check_block_options(value, "auto")


def test_config_takes_auto_and_integers():
    assert model_options(ModelConfig(name="egnn", options={"edge_chunk": "auto"})) == {"edge_chunk": "auto"}
    assert model_options(ModelConfig(name="fastegnn", options={"edge_chunk": 4096, "kernel": "auto"}))["edge_chunk"] == 4096
    with pytest.raises(ConfigError, match="edge_chunk"):
        model_options(ModelConfig(name="egnn", options={"edge_chunk": "big"}))


@pytest.mark.parametrize("model_class", [EGNN, FastEGNN])
@pytest.mark.parametrize("options", [{"edge_chunk": "auto"}, {"kernel": "auto"}], ids=["chunk-auto", "kernel-auto"])
def test_auto_paths_equal_the_plain_path(model_class, options):
    from scaleq.graph.builder import GraphBuilder

    batch = GraphBuilder(kind="radius", radius=1.5)(random_batch(num_graphs=2, nodes=(6, 9)))
    batch = batch.apply(lambda x: x.double() if x.is_floating_point() else x)
    torch.manual_seed(0)
    model = model_class(in_node_features=2, in_edge_features=2, hidden=8, layers=2).double()

    def loss(out):
        return sum(v.pow(2).sum() for v in out.values())

    assert_paths_agree(model, batch, options, loss, rtol=1e-10, atol=1e-10)
