"""A capped radius graph holds about N x cap pairs however large the radius: the searches cut each
block of targets to its nearest as they go, give the graph the unblocked search gives, and refuse a
graph that cannot fit before allocating it (one line, under a real address-space limit)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scaleq.graph import memory as graph_memory
from scaleq.graph.builder import radius_graph
from scaleq.graph.cell_list import cell_list_radius_graph, count_radius_edges
from scaleq.graph.nearest import keep_nearest

ROOT = Path(__file__).resolve().parents[2]


def clustered(n: int = 240, graphs: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense clumps (most nodes have far more than the cap within r) and a few loners."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(n, 3, generator=g) * 0.1
    pos[: n // 10] += 5.0 * torch.randn(n // 10, 3, generator=g)  # sparse outskirts
    batch = torch.repeat_interleave(torch.arange(graphs), n // graphs)
    return pos, batch


def nearest_of_full_graph(pos, radius, batch, cap):
    """The reference: every pair within r (no cap), then each target's nearest ``cap``."""
    full = cell_list_radius_graph(pos, radius, batch, pair_search="torch").edge_index
    return full[:, keep_nearest(full, pos, cap)]


@pytest.mark.parametrize("backend", ["torch_cluster", "cell_list"])
@pytest.mark.parametrize("radius", [0.15, 50.0])  # a normal radius, and one that reaches every node
def test_blocked_capped_search_keeps_the_nearest_of_the_whole_neighbourhood(backend, radius, monkeypatch):
    pos, batch = clustered()
    expected = nearest_of_full_graph(pos, radius, batch, 6)
    unblocked = radius_graph(pos, radius, batch, 6, backend=backend).edge_index  # one block: N x 7 < 2^20
    monkeypatch.setattr(graph_memory, "MIN_BLOCK_PAIRS", 1)  # blocks of N x (cap + 1) pairs: many of them here
    if backend == "cell_list":
        edges = cell_list_radius_graph(pos, radius, batch, max_num_neighbors=6, pair_search="torch", chunk_pairs=500)
    else:
        edges = radius_graph(pos, radius, batch, 6, backend="torch_cluster")
    assert edges.num_capped > 0
    assert torch.equal(edges.edge_index, unblocked)  # the same graph, in the same order
    # the nearest 6 of each complete neighbourhood (within a target, each backend has its own order)
    assert torch.equal(edges.edge_index[1], expected[1])
    assert set(map(tuple, edges.edge_index.t().tolist())) == set(map(tuple, expected.t().tolist()))


def test_the_count_pass_counts_each_node_up_to_its_cap():
    pos, batch = clustered()
    full = cell_list_radius_graph(pos, 0.15, batch, pair_search="torch").edge_index
    degree = torch.bincount(full[1], minlength=pos.shape[0])
    assert count_radius_edges(pos, 0.15, batch, 2, None, chunk_pairs=300) == full.shape[1]
    assert count_radius_edges(pos, 0.15, batch, 2, 6, chunk_pairs=300) == int(degree.clamp(max=6).sum())


TRITON_BLOCKS = """
import torch
from scaleq.graph import memory as graph_memory
from scaleq.graph.cell_list import cell_list_radius_graph
graph_memory.MIN_BLOCK_PAIRS = 1
g = torch.Generator().manual_seed(0)
pos = torch.randn(120, 3, generator=g) * 0.1
batch = torch.repeat_interleave(torch.arange(2), 60)
for radius, box in [(50.0, None), (0.12, None), (0.3, torch.tensor([[[-0.3, 0.3]] * 3] * 2))]:
    a = cell_list_radius_graph(pos, radius, batch, box=box, max_num_neighbors=5, pair_search="torch")
    b = cell_list_radius_graph(pos, radius, batch, box=box, max_num_neighbors=5, pair_search="triton")
    assert a.num_capped > 0 and a.num_capped == b.num_capped
    assert torch.equal(a.edge_index, b.edge_index), (radius, a.edge_index.shape, b.edge_index.shape)
    if box is not None:
        assert torch.equal(a.edge_shift, b.edge_shift)
print("identical")
"""


@pytest.mark.slow
def test_triton_fill_in_blocks_equals_the_torch_path_in_the_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", TRITON_BLOCKS], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "identical" in run.stdout


# In a child process under an address-space limit: a search that would need more refuses first.
UNDER_LIMIT = """
import resource, sys, torch
from scaleq.graph.builder import radius_graph
from scaleq.graph.memory import GraphSizeError
from scaleq.device_memory import free_memory
backend, cap = sys.argv[1], int(sys.argv[2])
pos = torch.randn(2 * 3000, 3, generator=torch.Generator().manual_seed(0))
batch = torch.repeat_interleave(torch.arange(2), 3000)
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize:')][0].split()[1]) * 1024
limit = vm + 600 * 2**20  # 600 MiB above what the process holds now
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
assert free_memory(torch.device('cpu')) <= 600 * 2**20
try:
    edges = radius_graph(pos, 50.0, batch, cap, backend=backend, num_graphs=2)
except GraphSizeError as err:
    print('refused:', err)
else:
    print('edges:', edges.edge_index.shape[1], 'capped:', edges.num_capped)
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch_cluster", "cell_list"])
def test_a_radius_far_too_large_is_refused_before_allocating_and_a_cap_bounds_it(backend):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def child(cap: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", UNDER_LIMIT, backend, str(cap)], env=env, capture_output=True,
                              text=True, timeout=300)

    # 2 x 3000 x 2999 edges within r, ~1.1 GB: refused, naming radius, cap, edges, bytes, free memory
    uncapped = child(10**7)
    assert uncapped.returncode == 0, uncapped.stderr[-3000:]
    assert uncapped.stdout.startswith("refused: radius graph: r=50 with max_num_neighbors=10000000 gives "
                                      "17,994,000 edges for 6,000 nodes"), uncapped.stdout
    assert "GiB free" in uncapped.stdout and "lower graph.radius" in uncapped.stdout
    # the cap: every node keeps 64, in the same limit
    capped = child(64)
    assert capped.returncode == 0, capped.stderr[-3000:]
    assert capped.stdout.split() == ["edges:", str(6000 * 64), "capped:", "6000"], capped.stdout
