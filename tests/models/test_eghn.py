import pytest
import torch
from torch_geometric.data import Batch, Data

from scaleq.config import LossConfig
from scaleq.graph.builder import GraphBuilder
from scaleq.losses import training_loss
from scaleq.models import EGHN
from scaleq.models.eghn import Clusters, EGHNEGNNLayer, EMMPLayer, UnPoolLayer, complete_cluster_graph
from scaleq.nn.edge_layout import EdgeLayout
from scaleq.testing.equivariance import check_equivariance
from tests.support.block_paths import PATHS, assert_paths_agree, chunk_splits_a_receiver, path_available

OUTPUTS = {
    "pos": "node_position",
    "assignments": "node_invariant",
    "cluster_pos": "position",
    "pooled_adjacency": "invariant",
}
SIZES = (7, 11, 5, 9)


def chain_graph(n, generator):
    """A random chain molecule: bonds i <-> i + 1 plus one ring closure."""
    forward = torch.stack([torch.arange(n - 1), torch.arange(1, n)])
    bonds = torch.cat([forward, forward.flip(0), torch.tensor([[0, n - 1], [n - 1, 0]])], dim=1)
    return Data(
        pos=torch.cumsum(torch.randn(n, 3, generator=generator), 0),
        vel=torch.randn(n, 3, generator=generator) * 0.3,
        h=torch.rand(n, 2, generator=generator),
        node_attr=torch.rand(n, 1, generator=generator),
        target=torch.randn(n, 3, generator=generator),
        horizon=torch.tensor([1.0]),
        bond_index=bonds,
        num_nodes=n,
    )


def graphs(sizes=SIZES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [chain_graph(n, generator) for n in sizes]


def make_batch(data_list, local="bonds"):
    builder = GraphBuilder(kind="radius", radius=6.0, local=local, local_k=3)
    return builder(Batch.from_data_list(data_list))


def make_model(**kwargs):
    torch.manual_seed(0)
    options = {"hidden": 16, "clusters": 3, "interaction_layers": 2, "pooling_layers": 2, "decoder_layers": 2, **kwargs}
    model = EGHN(in_node_features=2, in_edge_features=2, **options)
    # scale the coordinate / mixing heads up so the checks see large updates
    for module in model.modules():
        if isinstance(module, EGHNEGNNLayer):
            torch.nn.init.normal_(module.phi_x[-1].weight, std=0.3)
        elif isinstance(module, EMMPLayer) and module.phi_mix is not None:
            torch.nn.init.normal_(module.phi_mix[-1].weight, std=0.3)
        elif isinstance(module, UnPoolLayer):
            torch.nn.init.normal_(module.phi_w[-1].weight, std=0.3)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("local", ["bonds", "knn"])
def test_eghn_and_its_pooled_quantities_are_equivariant(dtype, local):
    batch = make_batch(graphs(), local)
    report = check_equivariance(make_model(), batch, OUTPUTS, dtype=dtype)
    assert set(report.errors) == set(OUTPUTS)


def test_equivariant_with_as_many_local_edges_as_nodes():
    """With one nearest neighbour per node the local graph has E_local = N edges: its attributes
    must still be read as edge fields (kept in order), not permuted like node fields."""
    batch = make_batch(graphs(), local="knn")
    batch = GraphBuilder(kind="radius", radius=6.0, local="knn", local_k=1)(batch)
    assert batch.local_attr.shape[0] == batch.num_nodes
    check_equivariance(make_model(), batch, OUTPUTS)


def test_check_sees_a_broken_pooling():
    """Pooling without the division by the column sum, S^T X, is not translation-equivariant: the
    check must say so, which shows that it looks at the cluster positions at all."""
    model = make_model().double()

    def unnormalised(batch):
        out = model(batch)
        weighted = out["assignments"].unsqueeze(-1) * batch.pos.unsqueeze(1)  # [N, K, D]
        pooled = torch.zeros(int(batch.num_graphs), 3, 3, dtype=batch.pos.dtype).index_add_(0, batch.batch, weighted)
        return {**out, "cluster_pos": pooled}

    with pytest.raises(AssertionError, match="cluster_pos"):
        check_equivariance(unnormalised, make_batch(graphs()), OUTPUTS)


def test_batch_of_different_sizes_equals_each_graph_alone():
    data = graphs()
    model = make_model().double().eval()
    whole = model(_double(make_batch(data)))
    start = 0
    for b, graph in enumerate(data):
        alone = model(_double(make_batch([graph])))
        n = graph.num_nodes
        torch.testing.assert_close(whole["pos"][start : start + n], alone["pos"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(whole["assignments"][start : start + n], alone["assignments"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(whole["cluster_pos"][b], alone["cluster_pos"][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(whole["pooled_adjacency"][b], alone["pooled_adjacency"][0], rtol=1e-10, atol=1e-12)
        start += n


def _double(batch):
    for key in batch.keys():
        if torch.is_tensor(batch[key]) and batch[key].is_floating_point():
            batch[key] = batch[key].double()
    return batch


def test_pooled_quantities_match_a_dense_reference():
    data = graphs()
    batch = _double(make_batch(data))
    out = make_model().double().eval()(batch)
    s = out["assignments"]
    for b in range(len(data)):
        nodes = (batch.batch == b).nonzero().flatten()
        s_b = s[nodes]  # [n, K]
        adjacency = torch.zeros(len(nodes), len(nodes), dtype=torch.float64)
        local = {int(v): i for i, v in enumerate(nodes)}
        for j, i in batch.local_index.t().tolist():
            if j in local:
                adjacency[local[i], local[j]] += 1.0
        torch.testing.assert_close(out["pooled_adjacency"][b], s_b.T @ adjacency @ s_b)
        # the clusters sit at the assignment-weighted means of the INPUT positions (published)
        expected = (s_b.T @ batch.pos[nodes]) / s_b.sum(0).unsqueeze(-1)
        torch.testing.assert_close(out["cluster_pos"][b], expected)


def test_cluster_graph_has_every_ordered_pair_with_self_loops():
    edges = complete_cluster_graph(2, 3, torch.device("cpu"))
    pairs = set(map(tuple, edges.t().tolist()))
    assert edges.shape == (2, 18) and len(pairs) == 18
    assert pairs == {(b * 3 + j, b * 3 + i) for b in range(2) for i in range(3) for j in range(3)}
    assert edges[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]  # row-major S^T A S order


def test_assignments_are_distributions():
    out = make_model()(make_batch(graphs()))
    assert out["assignments"].shape == (sum(SIZES), 3)
    torch.testing.assert_close(out["assignments"].sum(-1), torch.ones(sum(SIZES)))
    assert out["pooled_adjacency"].shape == (len(SIZES), 3, 3)


def test_start_at_input_starts_near_the_input_positions():
    """With ``start_at_input`` the first prediction is the input moved with its clusters."""
    torch.manual_seed(0)
    batch = make_batch(graphs())
    model = EGHN(in_node_features=2, in_edge_features=2, hidden=16, clusters=3, start_at_input=True)
    with torch.no_grad():
        torch.nn.init.zeros_(model.embed.weight)  # silence the velocity terms too
        for block in (model.external, model.high):
            for layer in block.layers:
                for head in (layer.phi_v[-1], layer.phi_x[-1]):
                    torch.nn.init.zeros_(head.weight)
                    torch.nn.init.zeros_(head.bias)
        pos = model(batch)["pos"]
    assert (pos - batch.pos).abs().max() < 1e-2 * batch.pos.abs().max()


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch(graphs())
    grads = []
    for every in (0, 1, 2):
        model = make_model(gradient_checkpointing=every)
        loss, _ = training_loss(model(batch), batch, LossConfig(connectivity_weight=2.0))
        loss.backward()
        grads.append(torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1])
    torch.testing.assert_close(grads[0], grads[2])


def test_every_parameter_gets_a_gradient():
    """DDP without find_unused_parameters needs every parameter in the graph of the loss."""
    batch = make_batch(graphs())
    model = make_model(decoder_layers=3)
    loss, _ = training_loss(model(batch), batch, LossConfig())
    loss.backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_bf16_autocast_keeps_coordinates_fp32():
    model = make_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(make_batch(graphs()))
    assert out["pos"].dtype == torch.float32 and out["cluster_pos"].dtype == torch.float32
    assert torch.isfinite(out["pos"]).all()


def test_pooling_keeps_full_precision_under_autocast():
    g = torch.Generator().manual_seed(0)
    batch = torch.tensor([2, 0, 1, 1, 0, 2, 2, 0, 1, 1])  # unsorted on purpose
    s = torch.softmax(torch.randn(10, 3, generator=g), -1)
    x = 100 * torch.randn(10, 3, generator=g)
    clusters = Clusters(s, batch, 3)
    pooled, unpooled = clusters.pool(x), clusters.unpool(torch.randn(3, 3, 2, generator=g))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(clusters.pool(x), pooled)
        assert clusters.unpool(pooled).dtype == torch.float32
    for b in range(3):  # against the definition, graph by graph
        nodes = batch == b
        expected = s[nodes].T @ x[nodes] / s[nodes].sum(0).unsqueeze(-1)
        torch.testing.assert_close(pooled[b], expected)
    assert unpooled.shape == (10, 2)


def test_a_periodic_graph_is_refused():
    """EGHN's pooling has no periodic form (scaleq.models.eghn.EGHN.periodic_problem): a periodic
    batch is refused with that reason, not silently pooled across the box."""
    from scaleq.testing.equivariance import periodic_batch

    batch = periodic_batch(torch.float32)
    batch.bond_index = torch.stack([torch.arange(0, 40), torch.arange(1, 41)])
    batch = GraphBuilder(kind="radius", radius=1.5, periodic=True, local="bonds")(batch)
    with pytest.raises(ValueError, match="EGHN on a periodic graph .* its pooling averages positions"):
        make_model()(batch)


def test_missing_local_graph_is_a_clear_error():
    batch = GraphBuilder(kind="complete")(Batch.from_data_list(graphs()))
    with pytest.raises(ValueError, match="graph.local"):
        make_model()(batch)


@pytest.mark.slow
def test_training_on_a_fixed_batch_lowers_the_loss():
    torch.manual_seed(1)
    batch = make_batch(graphs())
    batch.target = batch.pos + 0.5 * batch.vel  # a learnable map: constant-velocity motion
    model = EGHN(in_node_features=2, in_edge_features=2, hidden=16, clusters=3, interaction_layers=2,
                 pooling_layers=1, decoder_layers=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    config = LossConfig(connectivity_weight=0.5)
    losses = []
    for _ in range(60):
        loss, parts = training_loss(model(batch), batch, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(parts["mse"]))
    assert losses[-1] < 0.2 * losses[0]


def test_row_normalised_cluster_edges():
    """The named option divides each row of S^T A_global S by its sum; the default feeds it raw."""
    batch = _double(make_batch(graphs()))
    seen = {}
    for option in ("raw", "row_normalised"):
        model = make_model(cluster_edge_attr=option).double()
        # the layer reads the edges receiver-sorted; the cluster graph's edges already are (row = target)
        hook = model.high.layers[0].register_forward_pre_hook(
            lambda m, args, option=option: seen.update({option: args[3].edge_attr}))
        out = model(batch)
        hook.remove()
        s = out["assignments"]
        for b in range(len(SIZES)):
            nodes = (batch.batch == b).nonzero().flatten()
            adjacency = torch.zeros(len(nodes), len(nodes), dtype=torch.float64)
            index = {int(v): i for i, v in enumerate(nodes)}
            for j, i in batch.edge_index.t().tolist():
                if j in index:
                    adjacency[index[i], index[j]] += 1.0
            pooled = s[nodes].T @ adjacency @ s[nodes]  # [K, K], row = receiving cluster
            expected = pooled / pooled.sum(-1, keepdim=True) if option == "row_normalised" else pooled
            torch.testing.assert_close(seen[option][9 * b : 9 * (b + 1), 0], expected.flatten())
    with pytest.raises(ValueError, match="cluster_edge_attr must be 'raw' or 'row_normalised'"):
        make_model(cluster_edge_attr="softmax")


# -- the message-passing block's paths on the EGNN layers (global graph and cluster level) ------


def eghn_loss(out):
    return out["pos"].pow(2).sum() + out["assignments"].pow(3).sum() + out["pooled_adjacency"].pow(2).sum()


def _as(batch, dtype):
    return batch.apply(lambda x: x.to(dtype) if x.is_floating_point() else x)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("path", list(PATHS))
def test_every_block_path_gives_the_same_outputs_and_gradients(dtype, path):
    if not path_available(path):
        pytest.skip("triton is not installed")
    batch = _as(make_batch(graphs()), dtype)
    assert chunk_splits_a_receiver(batch.edge_index, 5)
    # fp32: three stacks in a row (encoder, cluster level, decoder); the kernels' atomic sums round
    # in another order, which reached 2.6e-5 relative on one gradient entry
    rtol, atol = (1e-10, 1e-10) if dtype == torch.float64 else (5e-5, 1e-5)
    assert_paths_agree(make_model().to(dtype), batch, PATHS[path], eghn_loss, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_block_is_equivariant(dtype):
    report = check_equivariance(make_model(edge_chunk=5), make_batch(graphs()), OUTPUTS, dtype=dtype)
    assert set(report.errors) == set(OUTPUTS)


def test_gradient_checkpointing_works_on_top_of_chunking():
    model = make_model(gradient_checkpointing=1, edge_chunk=4).double()
    assert_paths_agree(model, _double(make_batch(graphs())), {"edge_chunk": 4}, eghn_loss, rtol=1e-10, atol=1e-10)


def test_block_options_are_checked():
    with pytest.raises(ValueError, match="edge_chunk must be 0"):
        make_model(edge_chunk=-1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        make_model(kernel="cuda")


def test_chunked_emmp_keeps_memory_independent_of_the_number_of_edges():
    """At fixed N, 4x the local edges: a chunked EMMP layer keeps exactly as many bytes for backward."""
    n, hidden = 200, 16
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layer = EMMPLayer(hidden, 3, 0)
    kept = {}
    for e in (2_000, 8_000):
        h = torch.randn(n, hidden, generator=generator, requires_grad=True)
        z = torch.randn(n, 3, 3, generator=generator, requires_grad=True)
        layout = EdgeLayout.build(torch.randint(0, n, (2, e), generator=generator), n, torch.zeros(e, 0))
        for chunk in (0, 256):
            layer.edge_chunk = chunk
            storages = {}

            def pack(t, storages=storages):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                layer(h, z, layout)
            kept[e, chunk] = sum(storages.values())
    assert kept[8_000, 256] == kept[2_000, 256]
    assert kept[8_000, 0] - kept[2_000, 0] > 6_000 * hidden * 4  # plain: at least an [E, H] kept


def test_update_cap_bounds_each_update_length_and_keeps_equivariance():
    """The cap scales each node's coordinate update to at most ``update_cap`` in length: it binds
    here (the heads are scaled up) and the model stays equivariant, unlike a per-component clamp."""
    from scaleq.nn.update_cap import cap_length

    update = torch.tensor([[3.0, 4.0, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64)
    capped = cap_length(update, 1.0)
    assert torch.allclose(capped, torch.tensor([[0.6, 0.8, 0.0], [0.1, 0.0, 0.0]], dtype=torch.float64))
    batch = make_batch(graphs())
    capped_model, free_model = make_model(update_cap=0.05), make_model()
    assert not torch.allclose(capped_model(batch)["pos"], free_model(batch)["pos"])  # the cap is active
    check_equivariance(capped_model, batch, OUTPUTS, dtype=torch.float64)
    check_equivariance(capped_model, batch, OUTPUTS, dtype=torch.float32)
    with pytest.raises(ValueError, match="update_cap"):
        make_model(update_cap=0.0)
