"""The message-passing block: every path (plain torch, chunked with recomputation, fused Triton
kernel under the interpreter) against the plain torch path, the halo and the periodic shift."""

import dataclasses
import threading
from types import SimpleNamespace

import pytest
import torch

from scaleq.models.egnn import EGNN, EGNNLayer
from scaleq.nn import triton_edges
from scaleq.nn.message_passing import EdgeLayout, edge_sums

HIDDEN = 16


def skip_without_triton(options, device="cpu"):
    """Triton runs on the CPU under its interpreter (tests/conftest.py sets TRITON_INTERPRET)."""
    if options.get("kernel") in ("triton", "auto") and not triton_edges.usable_on(torch.device(device)):
        pytest.skip(f"triton cannot run on {device} here (not installed, or interpreter mode does not match)")


def make_layer(dtype, edge_dim=2, seed=0):
    torch.manual_seed(seed)
    layer = EGNNLayer(HIDDEN, edge_dim).to(dtype)
    torch.nn.init.normal_(layer.phi_x[-1].weight, std=0.3)  # real coordinate updates, not gain 0.001
    return layer


def random_graph(n=30, e=160, edge_dim=2, dtype=torch.float64, seed=1, hub=40, isolated=5):
    """Unsorted random edges; node 3 receives ``hub`` of them (chunk boundaries fall inside its
    edges) and the last ``isolated`` nodes receive none."""
    generator = torch.Generator().manual_seed(seed)
    source = torch.randint(0, n, (e,), generator=generator)
    target = torch.randint(0, n - isolated, (e,), generator=generator)
    target[torch.randperm(e, generator=generator)[:hub]] = 3
    edge_index = torch.stack([source, target])
    edge_attr = torch.randn(e, edge_dim, generator=generator, dtype=dtype)
    h = torch.randn(n, HIDDEN, generator=generator, dtype=dtype)
    pos = torch.randn(n, 3, generator=generator, dtype=dtype)
    return edge_index, edge_attr, h, pos


def run_block(layer, edge_index, edge_attr, h, pos, edge_shift=None, halo=None, **options):
    """Sums and the gradients of a scalar of them w.r.t. h, pos and the layer's parameters."""
    skip_without_triton(options, pos.device)
    h = h.clone().requires_grad_()
    pos = pos.clone().requires_grad_()
    layout = EdgeLayout.build(edge_index, pos.shape[0], edge_attr, edge_shift)
    sums = edge_sums(layer.phi_e, layer.phi_x, h, pos, layout, halo=halo, **options)
    weight_m = torch.linspace(-1, 1, sums.message_sum.numel(), dtype=h.dtype, device=h.device).view_as(sums.message_sum)
    loss = (sums.message_sum * weight_m).sum() + sums.coord_sum.pow(2).sum()
    params = [layer.phi_e[0].weight, layer.phi_e[0].bias, layer.phi_e[2].weight, layer.phi_e[2].bias,
              layer.phi_x[0].weight, layer.phi_x[0].bias, layer.phi_x[2].weight]
    grads = torch.autograd.grad(loss, [h, pos, *params])
    return [sums.message_sum.detach(), sums.coord_sum.detach(), *grads]


def assert_all_close(got, expected, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for k, (a, b) in enumerate(zip(got, expected)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, k=k: f"tensor {k}: {m}")


PATHS = [
    pytest.param({"edge_chunk": 1}, id="chunk1"),
    pytest.param({"edge_chunk": 7}, id="chunk7"),
    pytest.param({"edge_chunk": 10_000}, id="one-chunk"),
    pytest.param({"kernel": "triton"}, id="triton"),
    pytest.param({"kernel": "triton", "edge_chunk": 7}, id="triton-chunk7",
                 ),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("options", PATHS)
def test_every_path_equals_the_plain_torch_path(dtype, options):
    layer = make_layer(dtype)
    graph = random_graph(dtype=dtype)
    expected = run_block(layer, *graph)
    got = run_block(layer, *graph, **options)
    assert_all_close(got, expected, dtype)
    assert expected[0][-5:].abs().max() == 0  # isolated receivers get nothing


@pytest.mark.parametrize("options", PATHS)
def test_empty_graph_and_no_edge_attributes(options):
    layer = make_layer(torch.float64, edge_dim=0)
    edge_index, _, h, pos = random_graph(edge_dim=0)
    for edges in (edge_index, edge_index[:, :0]):
        edge_attr = torch.zeros(edges.shape[1], 0, dtype=torch.float64)
        assert_all_close(run_block(layer, edges, edge_attr, h, pos, **options),
                         run_block(layer, edges, edge_attr, h, pos), torch.float64)


def test_layout_is_receiver_sorted_csr():
    edge_index, edge_attr, _, _ = random_graph()
    layout = EdgeLayout.build(edge_index, 30, edge_attr)
    assert layout.source.dtype == layout.target.dtype == torch.int64  # int32 on CUDA only
    assert torch.all(layout.target[1:] >= layout.target[:-1])
    assert torch.equal(layout.ptr[1:] - layout.ptr[:-1], torch.bincount(edge_index[1], minlength=30))
    # the same multiset of (source, target, attribute) rows
    before = sorted(zip(edge_index[0].tolist(), edge_index[1].tolist(), edge_attr[:, 0].tolist()))
    after = sorted(zip(layout.source.tolist(), layout.target.tolist(), layout.edge_attr[:, 0].tolist()))
    assert before == after


@pytest.mark.parametrize("options", [{"edge_chunk": 7}, {"kernel": "triton"}], ids=["chunk7", "triton"])
def test_int32_node_indices_give_the_same_sums_and_gradients(options):
    """CUDA layouts hold int32 node indices; the paths (and the kernels' offsets) take them too."""
    skip_without_triton(options)
    layer = make_layer(torch.float64)
    edge_index, edge_attr, h, pos = random_graph()
    expected = run_block(layer, edge_index, edge_attr, h, pos, **options)
    narrow = EdgeLayout.build(edge_index, pos.shape[0], edge_attr)
    narrow = dataclasses.replace(narrow, source=narrow.source.int(), target=narrow.target.int())
    h, pos = h.clone().requires_grad_(), pos.clone().requires_grad_()
    sums = edge_sums(layer.phi_e, layer.phi_x, h, pos, narrow, **options)
    weight_m = torch.linspace(-1, 1, sums.message_sum.numel(), dtype=h.dtype).view_as(sums.message_sum)
    loss = (sums.message_sum * weight_m).sum() + sums.coord_sum.pow(2).sum()
    grads = torch.autograd.grad(loss, [h, pos, *layer.phi_e.parameters(), *layer.phi_x.parameters()])
    assert_all_close([sums.message_sum.detach(), sums.coord_sum.detach(), *grads], expected, torch.float64)


def test_bad_inputs_are_named():
    edge_index, edge_attr, h, pos = random_graph()
    with pytest.raises(ValueError, match="edge_attr has 3 rows"):
        EdgeLayout.build(edge_index, 30, edge_attr[:3])
    layer = make_layer(torch.float64)
    layout = EdgeLayout.build(edge_index, 30, edge_attr)
    with pytest.raises(ValueError, match="edge_chunk must be"):
        edge_sums(layer.phi_e, layer.phi_x, h, pos, layout, edge_chunk=-1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        edge_sums(layer.phi_e, layer.phi_x, h, pos, layout, kernel="cuda")
    with pytest.raises(ValueError, match="30 receivers but h has 29"):
        edge_sums(layer.phi_e, layer.phi_x, h[:29], pos, layout)


class ImageHalo:
    """Extends the node set by one periodic image per edge: row N + e is source(e) moved by
    -shift(e). The same graph written without edge_shift."""

    def __init__(self, source, shift):
        self.source, self.shift = source, shift

    def extend(self, t):
        rows = t[self.source]
        if t.shape[-1] == self.shift.shape[-1]:  # positions (D = 3 columns; H = 16 for node terms)
            rows = rows - self.shift.to(t.dtype)
        return torch.cat([t, rows])


@pytest.mark.parametrize("options", [{}, {"edge_chunk": 7}, {"kernel": "triton"}], ids=["torch", "chunk7", "triton"])
def test_edge_shift_equals_moving_the_source_to_its_image(options):
    layer = make_layer(torch.float64)
    edge_index, edge_attr, h, pos = random_graph()
    generator = torch.Generator().manual_seed(5)
    shift = torch.randint(-1, 2, (edge_index.shape[1], 3), generator=generator).double() * 2.5  # box side 2.5
    got = run_block(layer, edge_index, edge_attr, h, pos, edge_shift=shift, **options)
    n = pos.shape[0]
    images = torch.stack([n + torch.arange(edge_index.shape[1]), edge_index[1]])
    expected = run_block(layer, images, edge_attr, h, pos, halo=ImageHalo(edge_index[0], shift), **options)
    assert_all_close(got, expected, torch.float64)
    assert not torch.allclose(got[1], run_block(layer, edge_index, edge_attr, h, pos)[1])  # the shift matters


@pytest.mark.parametrize("options", [{"edge_chunk": 7}, {"kernel": "triton"}], ids=["chunk7", "triton"])
def test_gradients_reach_edge_attributes_and_shifts(options):
    """Edge attributes and periodic shifts that require grad (e.g. built from positions) get the
    plain path's gradients on every path."""
    skip_without_triton(options)
    layer = make_layer(torch.float64)
    edge_index, edge_attr, h, pos = random_graph()
    shift = torch.randn(edge_index.shape[1], 3, dtype=torch.float64)

    def gradients(**path):
        attr, edge_shift = edge_attr.clone().requires_grad_(), shift.clone().requires_grad_()
        layout = EdgeLayout.build(edge_index, pos.shape[0], attr, edge_shift)
        sums = edge_sums(layer.phi_e, layer.phi_x, h, pos, layout, **path)
        loss = sums.message_sum.sin().sum() + sums.coord_sum.pow(2).sum()
        return torch.autograd.grad(loss, [attr, edge_shift])

    expected = gradients()
    assert all(g.abs().max() > 0 for g in expected)
    assert_all_close(gradients(**options), expected, torch.float64)


# -- a genuine two-part split of one graph, run by two threads that exchange halo rows -----------


class Exchange:
    """Two parts meet at every ``extend`` and swap the tensors they extend."""

    def __init__(self):
        self.barrier = threading.Barrier(2, timeout=60)
        self.slots = [None, None]

    def swap(self, part, t):
        self.slots[part] = t
        self.barrier.wait()
        other = self.slots[1 - part]
        self.barrier.wait()  # both have read before the next call overwrites the slots
        return other


class PartHalo:
    """The halo of one part: its owned rows followed by the other part's rows ``halo_rows``
    (local indices there). Autograd carries the halo rows' gradients back to the other part."""

    def __init__(self, part, exchange, halo_rows):
        self.part, self.exchange, self.halo_rows = part, exchange, halo_rows

    def extend(self, t):
        return torch.cat([t, self.exchange.swap(self.part, t)[self.halo_rows]])


def split_batch(batch, owner):
    """Two parts of one graph: owned nodes, all edges into them, sources renumbered into
    [owned | halo]; returns the part batches and each part's owned global node ids."""
    exchange = Exchange()
    owned = [torch.nonzero(owner == p).flatten() for p in (0, 1)]
    local = torch.empty_like(owner)
    for ids in owned:
        local[ids] = torch.arange(ids.numel())
    parts = []
    for p in (0, 1):
        into = owner[batch.edge_index[1]] == p
        source, target = batch.edge_index[0, into], batch.edge_index[1, into]
        remote = owner[source] != p
        halo_nodes = torch.unique(source[remote])  # global ids, owned by the other part
        slot = torch.empty_like(owner)
        slot[halo_nodes] = owned[p].numel() + torch.arange(halo_nodes.numel())
        new_source = torch.where(remote, slot[source], local[source])
        parts.append(SimpleNamespace(
            pos=batch.pos[owned[p]], vel=batch.vel[owned[p]], h=batch.h[owned[p]],
            edge_index=torch.stack([new_source, local[target]]), edge_attr=batch.edge_attr[into],
            halo=PartHalo(p, exchange, local[halo_nodes]),
        ))
    return parts, owned


# (Triton's CPU interpreter is not thread-safe, so the kernel's halo path is checked through
# ImageHalo above, in one thread)
@pytest.mark.parametrize("options", [{}, {"edge_chunk": 5}])
def test_two_part_split_with_halo_equals_the_whole_graph(options):
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=2, hidden=HIDDEN, layers=3, **options).double()
    for layer in model.layers:
        torch.nn.init.normal_(layer.phi_x[-1].weight, std=0.3)
    n = 40
    generator = torch.Generator().manual_seed(2)
    pos = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    close = torch.cdist(pos, pos) < 0.45
    close.fill_diagonal_(False)
    edge_index = torch.nonzero(close).T.flip(0)  # j -> i
    batch = SimpleNamespace(
        pos=pos.requires_grad_(), vel=torch.randn(n, 3, generator=generator, dtype=torch.float64),
        h=torch.randn(n, 2, generator=generator, dtype=torch.float64), edge_index=edge_index,
        edge_attr=torch.randn(edge_index.shape[1], 2, generator=generator, dtype=torch.float64),
    )
    owner = (pos[:, 0] > 0.5).long().detach()  # split by space
    assert 5 < owner.sum() < n - 5
    weight = torch.randn(n, 3, generator=generator, dtype=torch.float64)

    whole = model(batch)["pos"]
    # the last layer's feature update feeds nothing (only positions are returned): allow_unused
    expected = torch.autograd.grad((whole * weight).sum(), [batch.pos, *model.parameters()], allow_unused=True)

    parts, owned = split_batch(batch, owner)
    outputs = [None, None]

    def run(p):
        outputs[p] = model(parts[p])["pos"]

    threads = [threading.Thread(target=run, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o is not None for o in outputs)
    assert any(parts[p].edge_index[0].max() >= owned[p].numel() for p in (0, 1))  # halo sources are used
    joined = torch.empty_like(whole)
    for p in (0, 1):
        joined = joined.index_put((owned[p],), outputs[p])
    got = torch.autograd.grad((joined * weight).sum(), [batch.pos, *model.parameters()], allow_unused=True)
    torch.testing.assert_close(joined, whole, rtol=1e-10, atol=1e-10)
    assert [a is None for a in got] == [b is None for b in expected]
    for a, b in zip(got, expected):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# -- memory: what the backward keeps ---------------------------------------------------------------


def saved_bytes(model, batch):
    """Bytes of the distinct storages autograd keeps for the backward of ``model(batch)``."""
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch)["pos"].sum()
    return sum(storages.values())


def test_chunked_path_keeps_memory_independent_of_the_number_of_edges():
    """At fixed N, 4x the edges: the chunked and Triton paths keep exactly as many bytes, the
    plain path grows with E. (No edge attributes here: they are input data, O(E Fe), kept by all.)"""
    n = 300
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = EGNN(in_node_features=2, in_edge_features=0, hidden=HIDDEN, layers=3)
    paths = [(0, "torch"), (256, "torch")] + ([(0, "triton")] if triton_edges.usable_on(torch.device("cpu")) else [])
    kept = {}
    for e in (3_000, 12_000):
        batch = SimpleNamespace(
            pos=torch.randn(n, 3, generator=generator).requires_grad_(), vel=torch.randn(n, 3, generator=generator),
            h=torch.randn(n, 2, generator=generator), edge_index=torch.randint(0, n, (2, e), generator=generator),
            edge_attr=torch.zeros(e, 0),
        )
        for path in paths:
            for layer in model.layers:
                layer.edge_chunk, layer.kernel = path
            kept[e, path] = saved_bytes(model, batch)
    for path in paths[1:]:
        assert kept[12_000, path] == kept[3_000, path], path
    chunk = paths[1]
    assert kept[3_000, chunk] < 4 * 3 * n * HIDDEN * 4 * 4  # a few [N, H] fp32 tensors per layer
    plain = paths[0]
    assert kept[12_000, plain] - kept[3_000, plain] > 9_000 * 3 * HIDDEN * 4  # at least an [E, H] per layer


# -- on a GPU: the compiled kernel (skips without CUDA) ----------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("options", [{"kernel": "triton"}, {"kernel": "auto"}, {"edge_chunk": 7}])
def test_every_path_on_cuda_equals_the_plain_torch_path(options):
    skip_without_triton(options, "cuda")
    layer = make_layer(torch.float32).cuda()
    graph = [t.cuda() for t in random_graph(dtype=torch.float32)]
    assert_all_close(run_block(layer, *graph, **options), run_block(layer, *graph), torch.float32)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
@pytest.mark.parametrize("options", [{"kernel": "triton"}, {"edge_chunk": 7}], ids=["triton", "chunk7"])
def test_every_path_under_bf16_autocast(device, options):
    """bf16 autocast: the edge MLPs in bf16 (the Triton kernels: bf16 operands, fp32 activations), coordinates fp32."""
    skip_without_triton(options, device)
    layer = make_layer(torch.float32).to(device)
    graph = [t.to(device) for t in random_graph(dtype=torch.float32)]
    with torch.autocast(device, dtype=torch.bfloat16):
        got = run_block(layer, *graph, **options)
        expected = run_block(layer, *graph)
    assert got[1].dtype == torch.float32  # coordinates stay fp32
    # the kernels round their weight products' operands to bf16 as torch does; Triton's interpreter
    # rounds toward zero where compiled code rounds to nearest (tests/nn/test_triton_edges.py)
    limit = 4e-2 if options.get("kernel") == "triton" and device == "cpu" else 2e-2
    for k, (a, b) in enumerate(zip(got, expected)):  # bf16 rounding differs by summation order: compare norms
        error = (a.float() - b.float()).norm() / b.float().norm()
        assert error < limit, f"tensor {k}: relative error {error:.3g}"
