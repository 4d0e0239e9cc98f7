import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaleq.bench.gpu import compare_edges
from scaleq.graph.builder import radius_graph
from scaleq.graph.cell_list import cell_list_radius_graph
from scaleq.triton_status import triton_status

ROOT = Path(__file__).resolve().parents[2]


def edge_set(edge_index):
    return set(map(tuple, edge_index.t().tolist()))


def brute_force(pos, r, batch, box=None):
    """{(j, i): shift} for every pair of one graph closer than r; periodic: the nearest image,
    found by trying every image in {-2..2}^D (dense, for small inputs)."""
    n, dim = pos.shape
    diff = pos[:, None, :] - pos[None, :, :]  # [i, j, D]
    allowed = (batch[:, None] == batch[None, :]) & ~torch.eye(n, dtype=torch.bool)
    if box is None:
        close = allowed & (diff.pow(2).sum(-1) < r * r)
        return {(j, i): None for i, j in close.nonzero().tolist()}
    images = torch.tensor(list(itertools.product(range(-2, 3), repeat=dim)), dtype=pos.dtype)  # [M, D]
    length = (box[:, :, 1] - box[:, :, 0])[batch]  # [i, D]
    shifts = images[None, :, :] * length[:, None, :]  # [i, M, D]
    d2 = (diff[:, :, None, :] + shifts[:, None, :, :]).pow(2).sum(-1)  # [i, j, M]
    best = d2.argmin(-1)
    close = allowed & (d2.gather(-1, best[..., None]).squeeze(-1) < r * r)
    return {(j, i): shifts[i, best[i, j]] for i, j in close.nonzero().tolist()}


def check_against_brute_force(pos, r, batch, box=None, **kwargs):
    result = cell_list_radius_graph(pos, r, batch, box=box, **kwargs)
    expected = brute_force(pos, r, batch, box)
    assert edge_set(result.edge_index) == set(expected)
    assert bool((result.edge_index[1].diff() >= 0).all())  # sorted by target
    if box is not None:
        assert result.edge_shift.shape == (result.edge_index.shape[1], pos.shape[1])
        wanted = torch.stack([expected[tuple(e)] for e in result.edge_index.t().tolist()]) if expected else result.edge_shift
        torch.testing.assert_close(result.edge_shift, wanted)
    else:
        assert result.edge_shift is None
    return result


def mixed_batch(sizes, dim, seed, clustered=False):
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(sum(sizes), dim, generator=g)
    if clustered:  # tight clumps far apart: a huge, mostly empty bounding box
        centres = torch.tensor([[0.0] * dim, [50.0] * dim, [-30.0] + [7.0] * (dim - 1)])
        pos = centres[torch.randint(0, 3, (sum(sizes),), generator=g)] + 0.3 * pos
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return pos, batch


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("clustered", [False, True])
def test_equals_brute_force_on_mixed_batches(dim, clustered):
    pos, batch = mixed_batch([40, 1, 0, 75, 23], dim, seed=dim, clustered=clustered)
    check_against_brute_force(pos, 0.25, batch, num_graphs=5)
    # batch need not be sorted for the cell list; tiny chunks give the same graph
    perm = torch.randperm(len(pos), generator=torch.Generator().manual_seed(9))
    shuffled = cell_list_radius_graph(pos[perm], 0.25, batch[perm], num_graphs=5, chunk_pairs=64)
    assert edge_set(perm[shuffled.edge_index]) == set(brute_force(pos, 0.25, batch))


def test_one_dimension_and_float64():
    pos = torch.rand(50, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    check_against_brute_force(pos, 0.05, torch.zeros(50, dtype=torch.long))


@pytest.mark.parametrize("dim", [2, 3])
def test_periodic_boxes_equal_brute_force(dim):
    pos, batch = mixed_batch([60, 45], dim, seed=7)
    box = torch.tensor([[[0.0, 1.0]] * dim, [[-0.5, 0.7]] * dim])
    pos[:5] += 1.0  # outside the box: wrapped
    check_against_brute_force(pos, 0.2, batch, box=box)


@pytest.mark.parametrize("r", [0.45, 0.6, 1.3])
def test_periodic_radius_beyond_half_the_box_uses_the_nearest_image(r):
    # sides 1.0 and 2.5: the first axis has 2 or 1 cells, the second several
    pos, batch = mixed_batch([30], 2, seed=11)
    pos[:, 1] *= 2.5
    box = torch.tensor([[[0.0, 1.0], [0.0, 2.5]]])
    result = check_against_brute_force(pos, r, batch, box=box)
    assert len(edge_set(result.edge_index)) == result.edge_index.shape[1]  # one edge per ordered pair


def test_radius_larger_than_the_points_spread():
    pos, batch = mixed_batch([12, 9], 3, seed=12)
    result = check_against_brute_force(pos, 5.0, batch)
    assert result.edge_index.shape[1] == 12 * 11 + 9 * 8


def test_empty_and_single_node_graphs():
    empty = cell_list_radius_graph(torch.zeros(0, 3), 0.5, torch.zeros(0, dtype=torch.long))
    assert empty.edge_index.shape == (2, 0)
    periodic = cell_list_radius_graph(torch.zeros(0, 2), 0.5, torch.zeros(0, dtype=torch.long), num_graphs=1,
                                      box=torch.tensor([[[0.0, 1.0], [0.0, 1.0]]]))
    assert periodic.edge_shift.shape == (0, 2)
    single = cell_list_radius_graph(torch.rand(1, 3), 0.5, torch.zeros(1, dtype=torch.long))
    assert single.edge_index.shape == (2, 0)


def test_duplicate_positions_are_neighbours():
    pos = torch.tensor([[0.1, 0.2], [0.1, 0.2], [0.1, 0.2], [0.9, 0.9]])
    result = check_against_brute_force(pos, 0.1, torch.zeros(4, dtype=torch.long))
    assert edge_set(result.edge_index) == {(j, i) for i in range(3) for j in range(3) if i != j}


def test_distance_exactly_r_is_not_an_edge_as_in_torch_cluster():
    side = torch.arange(5, dtype=torch.float32)
    pos = torch.cartesian_prod(side, side)  # unit lattice
    batch = torch.zeros(len(pos), dtype=torch.long)
    for r, expected in ((1.0, 0), (1.0001, 2 * 2 * 5 * 4)):
        cells = radius_graph(pos, r, batch, 64, backend="cell_list").edge_index
        reference = radius_graph(pos, r, batch, 64, backend="torch_cluster").edge_index
        assert cells.shape[1] == expected and edge_set(cells) == edge_set(reference)


def test_backends_agree_on_a_larger_batch():
    pos, batch = mixed_batch([900, 400, 1500], 3, seed=13)
    cells = radius_graph(pos, 0.12, batch, 512, backend="cell_list")
    reference = radius_graph(pos, 0.12, batch, 512, backend="torch_cluster")
    assert edge_set(cells.edge_index) == edge_set(reference.edge_index)
    assert torch.equal(cells.edge_index[1], reference.edge_index[1])  # same targets in the same order


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="box must have shape"):
        cell_list_radius_graph(torch.rand(4, 3), 0.5, torch.zeros(4, dtype=torch.long), box=torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="upper > lower"):
        cell_list_radius_graph(torch.rand(4, 2), 0.5, torch.zeros(4, dtype=torch.long), box=torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="float32 or float64"):
        cell_list_radius_graph(torch.rand(4, 3).half(), 0.5, torch.zeros(4, dtype=torch.long))


TRITON_CHECK = """
import torch
from scaleq.graph.cell_list import cell_list_radius_graph
from scaleq.triton_status import triton_status
g = torch.Generator().manual_seed(0)
cases = []
pos = torch.rand(50, 3, generator=g)
cases.append((pos, 0.3, torch.repeat_interleave(torch.arange(3), torch.tensor([20, 1, 29])), None, 6))
pos2 = torch.rand(40, 2, generator=g) * torch.tensor([1.0, 2.5])
pos2[:3] = pos2[3]  # duplicates
cases.append((pos2, 0.6, torch.zeros(40, dtype=torch.long), torch.tensor([[[0.0, 1.0], [0.0, 2.5]]]), None))
pos3 = torch.rand(30, 3, generator=g) - 0.2  # some outside the box
cases.append((pos3, 0.35, torch.zeros(30, dtype=torch.long), torch.tensor([[[0.0, 1.0]] * 3]), 4))
for pos, r, batch, box, cap in cases:
    a = cell_list_radius_graph(pos, r, batch, box=box, max_num_neighbors=cap, pair_search="torch")
    b = cell_list_radius_graph(pos, r, batch, box=box, max_num_neighbors=cap, pair_search="triton")
    assert a.edge_index.shape[1] > 0
    assert torch.equal(a.edge_index, b.edge_index), (a.edge_index, b.edge_index)
    assert a.num_capped == b.num_capped
    assert (a.edge_shift is None) == (b.edge_shift is None)
    if a.edge_shift is not None:
        assert torch.equal(a.edge_shift, b.edge_shift)
print("identical")
"""


@pytest.mark.slow
def test_triton_kernel_in_the_interpreter_equals_the_torch_path():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "identical" in run.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pair_searches_equal_torch_cluster_and_each_other():
    pos, batch = mixed_batch([3000, 1, 0, 5000], 3, seed=21)
    reference = radius_graph(pos, 0.08, batch, 128, backend="torch_cluster", num_graphs=4).edge_index
    box = torch.tensor([[[0.0, 1.0]] * 3] * 4)
    searches = ["torch"] + (["triton"] if triton_status().installed else [])
    periodic = {}
    for search in searches:
        edges = cell_list_radius_graph(pos.cuda(), 0.08, batch.cuda(), num_graphs=4, max_num_neighbors=128, pair_search=search)
        assert compare_edges(edges.edge_index.cpu(), reference, pos, 0.08).split()[0] in ("exact", "boundary")
        periodic[search] = cell_list_radius_graph(pos.cuda(), 0.08, batch.cuda(), num_graphs=4, box=box.cuda(), pair_search=search)
    if len(periodic) == 2:
        agree = compare_edges(periodic["triton"].edge_index.cpu(), periodic["torch"].edge_index.cpu(), pos, 0.08)
        assert agree.split()[0] in ("exact", "boundary")


def compile_cell_list_kernel_for_sm90() -> None:
    """Triton's compiler passes, to a cubin for sm_90 with the ptxas that ships with Triton."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from scaleq.graph.cell_list_kernels import _kernel

    kernel = _kernel()
    pointers = {name: "*i64" for name in kernel.arg_names if name.endswith("_ptr")}
    pointers.update({"pos_ptr": "*fp32", "box_ptr": "*fp32", "r2_ptr": "*fp32", "shift_ptr": "*fp32", "slot_begin": "i32", "num_slots": "i32"})
    for dim, periodic, fill in ((3, False, False), (3, True, True), (2, False, True)):
        constants = {"D": dim, "DP": 4 if dim == 3 else 2, "S": 3**dim, "PERIODIC": periodic, "FILL": fill, "BLOCK_SIZE": 128}
        source = ASTSource(kernel, {**pointers, **{c: "constexpr" for c in constants}}, constexprs=constants)
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"enable_fp_fusion": False})  # as launched
        assert compiled.asm["cubin"]


@pytest.mark.slow
def test_triton_kernel_compiles_for_an_h100_without_one():
    """The interpreter does not run Triton's compiler passes; this does, so a kernel that only
    interprets fails here. In a child process without TRITON_INTERPRET (the test session sets it)."""
    pytest.importorskip("triton")
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError:
        pytest.skip("this Triton has no ASTSource / GPUTarget")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "from tests.graph.test_cell_list import compile_cell_list_kernel_for_sm90 as c; c()"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
