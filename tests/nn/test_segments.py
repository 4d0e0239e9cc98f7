"""Sorted-segment sums and gathers: segment_reduce and index_add_ give the same sums and gradients
(both forced here on the CPU; the device picks one), and receiver-aligned chunks cover every edge."""

import pytest
import torch

from scaleq.nn.edge_layout import EdgeLayout
from scaleq.nn.segments import Segments, reduction_method, segment_expand, segment_sum, sum_sorted_rows

METHODS = ["segment_reduce", "index_add"]


def sorted_segments(size=9, rows=40, seed=0):
    """Random sorted segment ids with empty segments at the start, in the middle and at the end."""
    generator = torch.Generator().manual_seed(seed)
    index = torch.sort(torch.randint(1, size - 1, (rows,), generator=generator)).values
    index = index[index != 4]  # segment 4 stays empty too
    offsets = torch.zeros(size + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(index, minlength=size), 0)
    return Segments(index, offsets, size)


def test_the_device_picks_segment_reduce_on_cuda_and_index_add_elsewhere():
    assert reduction_method(torch.device("cuda")) == "segment_reduce"
    assert reduction_method(torch.device("cpu")) == "index_add"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("trailing", [(5,), (3, 2)])
def test_both_methods_give_the_same_sums(dtype, trailing):
    segments = sorted_segments()
    rows = torch.randn(segments.index.shape[0], *trailing, dtype=torch.float64)
    expected = torch.zeros(segments.size, *trailing, dtype=torch.float64).index_put_((segments.index,), rows,
                                                                                     accumulate=True)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    for method in METHODS:
        got = sum_sorted_rows(rows.to(dtype), segments, method)
        assert got.dtype == dtype and got.shape == expected.shape
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    assert expected[[0, 4, 8]].abs().max() == 0  # the empty segments


@pytest.mark.parametrize("method", METHODS)
def test_sum_and_gather_are_adjoint_and_differentiable_twice(method):
    segments = sorted_segments()
    rows = torch.randn(segments.index.shape[0], 3, dtype=torch.float64, requires_grad=True)
    values = torch.randn(segments.size, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r: segment_sum(r, segments, method), (rows,))
    assert torch.autograd.gradcheck(lambda v: segment_expand(v, segments, method), (values,))
    assert torch.autograd.gradgradcheck(lambda r: segment_sum(r, segments, method).pow(2), (rows,))
    assert torch.autograd.gradgradcheck(lambda v: segment_expand(v, segments, method).pow(2), (values,))
    # <sum(r), v> == <r, expand(v)>
    torch.testing.assert_close((segment_sum(rows, segments, method) * values).sum(),
                               (rows * segment_expand(values, segments, method)).sum())


def test_no_rows_gives_zeros():
    segments = Segments(torch.zeros(0, dtype=torch.long), torch.zeros(4, dtype=torch.long), 3)
    for method in METHODS:
        assert torch.equal(sum_sorted_rows(torch.zeros(0, 2), segments, method), torch.zeros(3, 2))


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_receiver_chunks_are_whole_receivers_covering_every_edge(size):
    generator = torch.Generator().manual_seed(1)
    n = 30
    target = torch.randint(0, n - 4, (160,), generator=generator)
    target[:40] = 3  # a receiver with more edges than a chunk
    layout = EdgeLayout.build(torch.stack([torch.randint(0, n, (160,), generator=generator), target]), n,
                              torch.zeros(160, 0))
    chunks = layout.chunks(size)
    assert layout.chunks(size) is chunks  # computed once per layout and size
    assert chunks[0].edges.start == 0 and chunks[0].receivers.start == 0
    assert chunks[-1].edges.stop == 160 and chunks[-1].receivers.stop == n
    for a, b in zip(chunks, chunks[1:]):
        assert a.edges.stop == b.edges.start and a.receivers.stop == b.receivers.start
    for chunk in chunks:
        receivers = chunk.receivers
        assert layout.ptr[receivers.start] == chunk.edges.start and layout.ptr[receivers.stop] == chunk.edges.stop
        width = chunk.edges.stop - chunk.edges.start
        assert width <= size or receivers.stop - receivers.start == 1  # larger only for one hub receiver
        local = layout.chunk_segments(chunk)
        assert local.offsets[0] == 0 and local.offsets[-1] == width and local.size == receivers.stop - receivers.start


def test_receiver_chunks_of_a_graph_without_edges():
    layout = EdgeLayout.build(torch.zeros(2, 0, dtype=torch.long), 5, torch.zeros(0, 1))
    assert [(c.edges, c.receivers) for c in layout.chunks(8)] == [(slice(0, 0), slice(0, 5))]


@pytest.mark.parametrize("options", [{"edge_chunk": 0}, {"edge_chunk": 7}], ids=["plain", "chunk7"])
def test_the_block_gives_the_same_results_with_either_reduction(monkeypatch, options):
    """EGNN and FastEGNN (real edges and real-virtual messages) with segment_reduce forced on the
    CPU, against index_add_ (the CPU's choice): outputs and every gradient, fp64."""
    from scaleq.graph.builder import GraphBuilder
    from scaleq.models import EGNN, FastEGNN
    from scaleq.nn import segments as segments_module
    from tests.support.block_paths import outputs_and_gradients
    from tests.support.stores import random_batch

    batch = GraphBuilder(kind="radius", radius=1.5)(random_batch(num_graphs=3, nodes=(5, 9, 7)))
    batch = batch.apply(lambda x: x.double() if x.is_floating_point() else x)
    common = {"in_node_features": 2, "in_edge_features": 2, "hidden": 8, "layers": 2, "kernel": "torch", **options}
    for model in (EGNN(**common), FastEGNN(**common, virtual_nodes=2)):
        model = model.double()

        def loss(out):
            return sum(v.pow(2).sum() for v in out.values())

        results = {}
        for method in METHODS:
            monkeypatch.setattr(segments_module, "reduction_method", lambda device, m=method: m)
            results[method] = outputs_and_gradients(model, batch, loss)
        (out_a, grads_a), (out_b, grads_b) = results.values()
        for key in out_a:
            torch.testing.assert_close(out_a[key], out_b[key], rtol=1e-10, atol=1e-10)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
