import pytest
import torch
from torch_geometric.data import Batch

from scaleq.graph.builder import GraphBuilder
from scaleq.losses import mmd_virtual
from scaleq.models import FastEGNN
from scaleq.nn.periodic import circular_mean
from scaleq.testing.equivariance import (
    Transform,
    check_equivariance,
    check_periodic_equivariance,
    periodic_batch,
    random_orthogonal,
)
from tests.support.block_paths import PATHS, assert_paths_agree, chunk_splits_a_receiver, path_available
from tests.support.stores import random_batch

OUTPUTS = {"pos": "node_position", "virtual_pos": "position", "virtual_h": "invariant"}
NODES = (5, 9, 3, 7)  # mixed graph sizes


def make_batch(edge_drop=0.0, kind="complete"):
    builder = GraphBuilder(kind=kind, radius=1.5 if kind == "radius" else None, edge_drop=edge_drop)
    return builder(random_batch(num_graphs=len(NODES), nodes=NODES))


def double(batch):
    return batch.apply(lambda x: x.double() if x.is_floating_point() else x)


def make_model(**kwargs):
    torch.manual_seed(0)
    options = {"in_node_features": 2, "in_edge_features": 2, "hidden": 16, "layers": 3, **kwargs}
    model = FastEGNN(**options)
    # the published coordinate heads start at gain 0.001; scale them up so the check sees real updates
    for layer in model.layers:
        for head in (layer.phi_x, layer.phi_xv, layer.phi_zv):
            torch.nn.init.normal_(head[-1].weight, std=0.3)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"virtual_distance": "squared", "virtual_aggregation": "mean"},
        {"velocity": False, "virtual_nodes": 1},
    ],
    ids=["published", "alternatives", "no-velocity-C1"],
)
def test_fastegnn_is_equivariant(dtype, options):
    model = make_model(**options)
    report = check_equivariance(model, make_batch(), OUTPUTS, dtype=dtype)
    assert max(report.errors.values()) < (1e-9 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("edge_drop", [0.5, 1.0])
def test_equivariant_with_dropped_and_no_real_edges(dtype, edge_drop):
    batch = make_batch(edge_drop=edge_drop, kind="radius")
    if edge_drop == 1.0:
        assert batch.edge_index.shape[1] == 0
    check_equivariance(make_model(), batch, OUTPUTS, dtype=dtype)


PERIODIC = GraphBuilder(kind="radius", radius=1.5, periodic=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "options",
    [{}, {"virtual_distance": "squared", "virtual_aggregation": "mean"}, {"edge_chunk": 7}],
    ids=["published", "alternatives", "chunked"],
)
def test_fastegnn_honours_a_periodic_box(dtype, options):
    """Virtual nodes start at the circular mean and meet the real ones by minimum image: re-imaging,
    translation with wrap and the cube's symmetries about the box centre give the same state
    (virtual positions compared modulo the box too)."""
    report = check_periodic_equivariance(make_model(**options), periodic_batch(), OUTPUTS, graph=PERIODIC, dtype=dtype)
    assert report.control > 1e-2


def test_periodic_virtual_nodes_start_at_the_circular_mean():
    model = make_model(layers=1).double()
    for layer in model.layers:
        layer.phi_zv[-1].weight.data.zero_()
    batch = PERIODIC(periodic_batch())
    z = model(batch)["virtual_pos"].view(2, 3, 3)
    centre = circular_mean(batch.pos, batch.batch, 2, batch.box)
    torch.testing.assert_close(z, centre[:, None].expand(2, 3, 3))
    # a cluster across the corner: the circular mean is at the corner, the plain mean mid-box
    near = batch.pos[batch.batch == 0][:12]
    lower = torch.full((1, 3), -1.0, dtype=torch.float64)
    corner = circular_mean(near, torch.zeros(12, dtype=torch.long), 1, batch.box[:1])
    gap = (corner - lower) - 4.0 * torch.round((corner - lower) / 4.0)
    assert gap.abs().max() < 0.4 and (near.mean(0) - lower).abs().min() > 0.5


def test_periodic_mmd_uses_minimum_images():
    """Re-imaging predicted and virtual positions by box vectors leaves the MMD term as it is;
    without the box it changes."""
    batch = PERIODIC(periodic_batch())
    generator = torch.Generator().manual_seed(1)
    z = batch.pos[torch.tensor([0, 5, 9, 30, 31, 35])]  # 3 virtual nodes per graph, among the particles
    length = (batch.box[..., 1] - batch.box[..., 0]).index_select(0, batch.batch)
    moved = batch.pos + torch.randint(-2, 3, batch.pos.shape, generator=generator) * length
    z_length = length[torch.tensor([0, 5, 9, 30, 31, 35])]  # graph 0's side 4.0, graph 1's 3.5
    z_moved = z + torch.randint(-2, 3, z.shape, generator=generator) * z_length

    def mmd(pos, virtual, box):
        return mmd_virtual(pos, virtual, batch.batch, 2, sigma=1.0, generator=torch.Generator().manual_seed(0), box=box)

    torch.testing.assert_close(mmd(moved, z_moved, batch.box), mmd(batch.pos, z, batch.box), rtol=1e-12, atol=1e-12)
    assert (mmd(moved, z_moved, None) - mmd(batch.pos, z, None)).abs() > 1e-2


def test_outputs_have_documented_shapes_and_virtual_nodes_move_apart():
    model = make_model(virtual_nodes=3)
    batch = make_batch()
    out = model(batch)
    b, c = len(NODES), 3
    assert out["pos"].shape == (sum(NODES), 3)
    assert out["virtual_pos"].shape == (b * c, 3) and out["virtual_h"].shape == (b * c, 16)
    z = out["virtual_pos"].view(b, c, 3)
    # all start at the centre of mass; the shared learnable S makes them distinct after the layers
    assert (z[:, 0] - z[:, 1]).norm(dim=-1).min() > 1e-4


def test_virtual_nodes_start_at_the_centre_of_mass():
    model = make_model(layers=1)
    for layer in model.layers:  # with every coordinate head at zero, z stays where it started
        layer.phi_zv[-1].weight.data.zero_()
    batch = make_batch()
    z = model(batch)["virtual_pos"].view(len(NODES), 3, 3)
    for b in range(len(NODES)):
        torch.testing.assert_close(z[b], batch.pos[batch.batch == b].mean(0).expand(3, 3))


def test_each_graph_is_independent_of_the_others_in_its_batch():
    model = make_model().double()
    raw = double(random_batch(num_graphs=len(NODES), nodes=NODES))
    together = model(GraphBuilder(kind="complete")(raw.clone()))
    alone = model(GraphBuilder(kind="complete")(Batch.from_data_list([raw.get_example(1)])))
    torch.testing.assert_close(together["pos"][raw.batch == 1], alone["pos"])
    torch.testing.assert_close(together["virtual_pos"].view(len(NODES), 3, 3)[1], alone["virtual_pos"])


def test_gravity_term_is_equivariant_about_its_axis_only():
    model = make_model(gravity=[0.0, -1.0, 0.0]).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.phi_g[-1].weight, std=0.3)
    batch = double(make_batch())
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        reference = model(batch)
        angle = 0.7
        about_y = torch.tensor(
            [[torch.cos(torch.tensor(angle)), 0, torch.sin(torch.tensor(angle))], [0, 1, 0],
             [-torch.sin(torch.tensor(angle)), 0, torch.cos(torch.tensor(angle))]], dtype=torch.float64,
        )
        mirror_x = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))  # keeps the y axis
        for rotation in (about_y, mirror_x @ about_y):
            g = Transform(rotation, torch.randn(3, generator=generator, dtype=torch.float64),
                          torch.randperm(batch.num_nodes, generator=generator))
            moved = model(g.apply_to_batch(batch))
            torch.testing.assert_close(moved["pos"], g.apply_to_output(reference["pos"], "node_position"))
            torch.testing.assert_close(moved["virtual_pos"], g.apply_to_output(reference["virtual_pos"], "position"))
        # a general rotation moves the gravity axis: the outputs are then NOT equivariant
        general = random_orthogonal(3, generator, torch.float64, reflect=False)
        g = Transform(general, torch.zeros(3, dtype=torch.float64), torch.arange(batch.num_nodes))
        moved = model(g.apply_to_batch(batch))
        assert not torch.allclose(moved["pos"], g.apply_to_output(reference["pos"], "node_position"), atol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grads = []
    for every in (0, 1, 2):
        model = make_model(gradient_checkpointing=every)
        out = model(batch)
        loss = (out["pos"] - batch.target).pow(2).mean() + out["virtual_pos"].pow(2).mean()
        loss.backward()
        grads.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_bf16_autocast_keeps_coordinates_fp32():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = make_model()(make_batch())
    assert out["pos"].dtype == torch.float32 and out["virtual_pos"].dtype == torch.float32


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="gravity must have 3 components"):
        FastEGNN(in_node_features=2, in_edge_features=2, gravity=[0.0, -1.0])
    with pytest.raises(ValueError, match="virtual_nodes >= 1"):
        FastEGNN(in_node_features=2, in_edge_features=2, virtual_nodes=0)


# -- the message-passing block's paths on the real edges -----------------------------------------


def fast_loss(out):
    return out["pos"].pow(2).sum() + out["virtual_pos"].pow(2).sum() + out["virtual_h"].pow(2).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_block_path_gives_the_same_outputs_and_gradients(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    batch = make_batch(kind="radius").apply(lambda x: x.to(dtype) if x.is_floating_point() else x)
    assert chunk_splits_a_receiver(batch.edge_index, 5)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    assert_paths_agree(make_model().to(dtype), batch, PATHS[path], fast_loss, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["chunk5", "triton"])
def test_every_block_path_handles_no_real_edges(path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    batch = double(make_batch(edge_drop=1.0, kind="radius"))
    assert_paths_agree(make_model().double(), batch, PATHS[path], fast_loss, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", ["chunk5", pytest.param("triton", marks=pytest.mark.slow)])  # interpreter: seconds
def test_every_block_path_is_equivariant(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    report = check_equivariance(make_model(**PATHS[path]), make_batch(), OUTPUTS, dtype=dtype)
    assert max(report.errors.values()) < (1e-9 if dtype == torch.float64 else 1e-4)


def test_gradient_checkpointing_works_on_top_of_chunking():
    model = make_model(gradient_checkpointing=2, edge_chunk=4).double()
    assert_paths_agree(model, double(make_batch()), {"edge_chunk": 4}, fast_loss, rtol=1e-10, atol=1e-10)


# -- memory: what the backward keeps per node --------------------------------------------------------


def saved_bytes(model, batch):
    """Bytes of the distinct storages autograd keeps for the backward of ``model(batch)``."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)
    return sum(storages.values())


def test_chunked_real_virtual_messages_keep_no_per_node_memory_of_the_virtual_nodes():
    """Bytes kept per node, from two graph sizes: with ``edge_chunk`` the same for C = 1 and C = 6
    virtual nodes (the [N, C, H] messages are recomputed in backward); plain, they grow with C."""
    hidden, layers = 16, 2
    batches = [GraphBuilder(kind="radius", radius=0.9)(random_batch(num_graphs=2, nodes=(n, n), seed=3))
               for n in (40, 160)]
    added_nodes = batches[1].num_nodes - batches[0].num_nodes
    per_node = {}
    for chunk in (0, 64):
        for c in (1, 6):
            model = make_model(virtual_nodes=c, hidden=hidden, layers=layers, edge_chunk=chunk)
            kept = [saved_bytes(model, batch) for batch in batches]
            per_node[chunk, c] = (kept[1] - kept[0]) / added_nodes
    assert per_node[64, 6] == per_node[64, 1]
    assert per_node[0, 6] - per_node[0, 1] >= 5 * hidden * 4 * layers  # plain: at least an [N, C, H] per layer


def test_chunked_real_virtual_messages_under_bf16_autocast():
    """bf16 autocast: the chunked path's recomputation runs under the forward's autocast state;
    outputs and gradients match the plain path's to bf16 rounding, coordinates stay fp32."""
    batch = make_batch(kind="radius")
    results = []
    for chunk in (0, 5):
        model = make_model(edge_chunk=chunk)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(batch)
            fast_loss(out).backward()
        assert out["pos"].dtype == torch.float32 and out["virtual_pos"].dtype == torch.float32
        # the last layer's feature update feeds no output: no gradient there (plain) or zeros (chunked)
        grads = torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()])
        results.append({"pos": out["pos"].detach(), "virtual_h": out["virtual_h"].detach().float(), "gradients": grads})
    for key, expected in results[0].items():  # bf16 rounding differs by summation order: compare norms
        error = (results[1][key] - expected).norm() / expected.norm()
        assert error < 2e-2, f"{key}: relative error {error:.3g}"
