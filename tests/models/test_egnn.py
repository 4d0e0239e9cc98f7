import pytest
import torch

from scaleq.graph.builder import GraphBuilder
from scaleq.models import EGNN
from scaleq.testing.equivariance import check_equivariance, check_periodic_equivariance, periodic_batch
from tests.support.block_paths import (
    PATHS,
    assert_paths_agree,
    chunk_splits_a_receiver,
    outputs_and_gradients,
    path_available,
    with_path,
)
from tests.support.stores import random_batch


def make_batch():
    return GraphBuilder(kind="complete")(random_batch())


def make_model(**kwargs):
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=16, layers=3, **kwargs)
    # the published coordinate head starts at gain 0.001; scale it up so the check sees real updates
    for layer in model.layers:
        torch.nn.init.normal_(layer.phi_x[-1].weight, std=0.3)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("velocity", [True, False])
def test_egnn_is_equivariant(dtype, velocity):
    report = check_equivariance(make_model(velocity=velocity), make_batch(), {"pos": "node_position"}, dtype=dtype)
    assert report.errors["pos"] < (1e-9 if dtype == torch.float64 else 1e-4)


PERIODIC = GraphBuilder(kind="radius", radius=1.5, periodic=True)


def test_the_periodic_batch_has_most_edges_crossing_the_boundary():
    batch = PERIODIC(periodic_batch())
    assert batch.edge_index.shape[1] > 200
    assert (batch.edge_shift != 0).any(-1).double().mean() > 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("velocity", [True, False])
def test_egnn_honours_a_periodic_box(dtype, velocity):
    """Re-imaging, translation with wrap, the cube's symmetries about the box centre (fp64 1e-10,
    fp32 1e-5, positions modulo the box), and a generic rotation that is no symmetry."""
    report = check_periodic_equivariance(make_model(velocity=velocity), periodic_batch(), {"pos": "node_position"},
                                         graph=PERIODIC, dtype=dtype)
    assert report.control > 1e-2


def test_the_periodic_check_catches_a_model_that_ignores_the_box():
    model = make_model().double()

    def blind(batch):  # the raw differences x_i - x_j, as a model that drops edge_shift sees them
        batch.edge_shift = torch.zeros_like(batch.edge_shift)
        return model(batch)

    with pytest.raises(AssertionError, match="not periodic-equivariant: output 'pos' under re-imaging"):
        check_periodic_equivariance(blind, periodic_batch(), {"pos": "node_position"}, graph=PERIODIC)


def test_the_periodic_check_fails_when_a_generic_rotation_is_also_a_symmetry():
    """The control: a model whose output does not depend on the box passes every periodic symmetry,
    and the check says it could not have failed."""
    with pytest.raises(AssertionError, match="a generic rotation, which is no symmetry of a periodic box"):
        check_periodic_equivariance(lambda b: {"pos": b.pos + 0.1 * b.vel}, periodic_batch(), {"pos": "node_position"},
                                    graph=PERIODIC)


def test_check_catches_a_model_that_is_not_equivariant():
    def broken(batch):
        return {"pos": batch.pos + torch.tensor([1.0, 0.0, 0.0], dtype=batch.pos.dtype) * batch.pos[:, :1]}

    with pytest.raises(AssertionError, match="not equivariant"):
        check_equivariance(broken, make_batch(), {"pos": "node_position"})


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grads = []
    for every in (0, 1, 2):
        model = make_model(gradient_checkpointing=every)
        loss = (model(batch)["pos"] - batch.target).pow(2).mean()
        loss.backward()
        # the last layer's feature update feeds nothing (only coordinates are returned): no gradient
        grads.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_bf16_autocast_keeps_coordinates_fp32():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch())["pos"]
    assert out.dtype == torch.float32


# -- the message-passing block's paths: chunked with recomputation, fused Triton kernel ----------

MIXED = (5, 9, 1, 7)  # mixed graph sizes, one single-node graph


def radius_batch(edge_drop=0.0):
    """Radius graph over mixed graph sizes: some nodes have no neighbours at this radius."""
    return GraphBuilder(kind="radius", radius=2.0, edge_drop=edge_drop)(random_batch(num_graphs=4, nodes=MIXED))


def double(batch):
    return batch.apply(lambda x: x.double() if x.is_floating_point() else x)


def pos_loss(out):
    return out["pos"].pow(2).sum()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_block_path_gives_the_same_outputs_and_gradients(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    batch = radius_batch().apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
    assert torch.bincount(batch.edge_index[1], minlength=batch.num_nodes).min() == 0  # isolated nodes
    assert chunk_splits_a_receiver(batch.edge_index, 5)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_paths_agree(make_model().to(dtype), batch, PATHS[path], pos_loss, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["chunk5", "triton"])
def test_every_block_path_handles_a_graph_without_edges(path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    batch = double(radius_batch(edge_drop=1.0))
    assert batch.edge_index.shape[1] == 0
    assert_paths_agree(make_model().double(), batch, PATHS[path], pos_loss, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ["chunk5", pytest.param("triton", marks=pytest.mark.slow)])  # interpreter: seconds
def test_every_block_path_is_equivariant(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    report = check_equivariance(make_model(**PATHS[path]), make_batch(), {"pos": "node_position"}, dtype=dtype)
    assert report.errors["pos"] < (1e-9 if dtype == torch.float64 else 1e-4)


def test_gradient_checkpointing_works_on_top_of_chunking():
    batch = double(radius_batch())
    model = make_model(gradient_checkpointing=1, edge_chunk=3).double()
    assert_paths_agree(model, batch, {"edge_chunk": 3}, pos_loss, rtol=1e-10, atol=1e-10)


def test_chunked_path_under_bf16_autocast_keeps_coordinates_fp32():
    batch = radius_batch()
    model = make_model()
    outputs = {}
    for chunk in (0, 4):
        model = with_path(model, {"edge_chunk": chunk})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[chunk], grads = outputs_and_gradients(model, batch, pos_loss)
        assert outputs[chunk]["pos"].dtype == torch.float32
        assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(outputs[4]["pos"], outputs[0]["pos"], rtol=1e-2, atol=1e-2)


def test_bad_block_options_are_refused():
    with pytest.raises(ValueError, match="edge_chunk must be"):
        EGNN(in_node_features=2, in_edge_features=2, edge_chunk=-3)
    with pytest.raises(ValueError, match="kernel must be one of"):
        EGNN(in_node_features=2, in_edge_features=2, kernel="cuda")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mean_messages_and_a_capped_update_stay_equivariant(dtype):
    """FastEGNN's EGNN baseline takes the mean of the messages; the cap bounds each update's length.
    Both change the outputs here (the cap binds: the heads are scaled up) and keep equivariance."""
    batch = make_batch()
    plain, mean, capped = make_model(), make_model(message_aggregation="mean"), make_model(update_cap=0.05)
    for model in (mean, capped):
        assert not torch.allclose(model(batch)["pos"], plain(batch)["pos"])
        report = check_equivariance(model, batch, {"pos": "node_position"}, dtype=dtype)
        assert report.errors["pos"] < (1e-9 if dtype == torch.float64 else 1e-4)
    step = capped(batch)["pos"] - batch.pos
    assert step.norm(dim=-1).max() <= 3 * 0.05 + 1e-6  # three layers, each at most 0.05 long
    with pytest.raises(ValueError, match="message_aggregation"):
        make_model(message_aggregation="max")
    with pytest.raises(ValueError, match="update_cap"):
        make_model(update_cap=0.0)
