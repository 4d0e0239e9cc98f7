"""Periodic boxes under graph parallelism: R = 2 and 3 gloo ranks splitting every graph of the
periodic batch (two cubic boxes, most edges across the boundary) give the one-process outputs, and
the periodic symmetries of scaleq.testing.equivariance hold on the assembled outputs, fp64 and fp32,
for every model that honours a box (EGNN, FastEGNN, DuSEGO)."""

import pytest
import torch

from scaleq.distributed.process_group import free_port
from scaleq.distributed.spawn import spawn
from scaleq.testing.equivariance import compare_periodic, periodic_batch, periodic_transforms
from tests.support.graph_parallel import PERIODIC_CASES, assemble, graph_parallel_periodic, periodic_outputs

pytestmark = pytest.mark.slow
DTYPES = {"float64": (torch.float64, 1e-10), "float32": (torch.float32, 1e-5)}


@pytest.mark.parametrize("world_size", [2, 3])
def test_periodic_symmetries_hold_under_graph_parallelism(world_size, tmp_path):
    spawn(graph_parallel_periodic, world_size, free_port(), list(PERIODIC_CASES), str(tmp_path))
    for name, (_, _, outputs) in PERIODIC_CASES.items():
        for dtype_name, (dtype, tol) in DTYPES.items():
            ranks = [torch.load(tmp_path / f"{name}-{dtype_name}-{rank}.pt", weights_only=False)
                     for rank in range(world_size)]
            states = [assemble([rank[i] for rank in ranks]) for i in range(len(ranks[0]))]
            assert all(sum(rank[i]["halo_rows"] for rank in ranks) > 0 for i in range(len(states))), name
            single = periodic_outputs(name, dtype=dtype)
            for got, expected in zip(states, single, strict=True):  # the one-process outputs, state by state
                for key, value in {**expected["nodes"], **expected["graphs"]}.items():
                    torch.testing.assert_close({**got["nodes"], **got["graphs"]}[key], value, atol=tol, rtol=tol,
                                               msg=f"{name} {dtype_name}: {key}")
            batch = periodic_batch(dtype)
            merged = [{**s["nodes"], **s["graphs"]} for s in states]
            compare_periodic(merged[0], merged[1:], periodic_transforms(batch), outputs, batch, tol=tol)
