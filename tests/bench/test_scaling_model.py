"""The scaling model (scaleq/bench/scaling_model.py) against hand-worked values and against the
real partition; the benchmark's /proc/net/dev parser; docs/scaling.md's tables as the command makes them."""

import math
from pathlib import Path

import pytest

from scaleq.bench import scaling_model as m
from scaleq.bench.host_scaling import parse_net_dev
from scaleq.bench.models import Workload, random_particles
from scaleq.bench.scaling_report import BEGIN, END, markdown, read_measured, update_page
from scaleq.distributed.partition import coordinate_bisection, shard_batch
from scaleq.graph.builder import GraphBuilder

ROOT = Path(__file__).resolve().parents[2]


def test_ring_and_tree_all_reduce_by_hand():
    link = m.Link("8 Gbit/s", 8.0, 10.0)  # 1e9 bytes/s, 10 us a message
    assert m.ring_allreduce_bytes(1000, 4) == 1500  # 2 (4 - 1) / 4
    assert m.ring_allreduce_bytes(1000, 1) == 0
    assert math.isclose(m.allreduce_s(1e6, 4, link), 1.5e-3 + 6 * 10e-6)
    assert math.isclose(m.allreduce_s(1e6, 4, link, "tree"), 1.5e-3 + 4 * 10e-6)
    assert math.isclose(m.allreduce_s(1e6, 256, link, "tree"), 2 * 255 / 256 * 1e-3 + 16 * 10e-6)
    assert m.allreduce_s(1e6, 1, link) == 0
    with pytest.raises(ValueError, match="'ring' or 'tree'"):
        m.allreduce_s(1e6, 4, link, "butterfly")


def test_bisection_halves_the_longest_side_first_axis_on_ties():
    assert [m.bisection_cells(p) for p in (1, 2, 4, 8, 64, 256)] == [
        (1, 1, 1), (2, 1, 1), (2, 2, 1), (2, 2, 2), (4, 4, 4), (8, 8, 4)]
    assert [m.neighbour_ranks(p) for p in (1, 2, 4, 8, 64, 256)] == [0, 1, 3, 7, 26, 26]
    with pytest.raises(ValueError, match="power of two"):
        m.bisection_cells(6)


def test_halo_thickness_limits():
    assert m.halo_thickness(0.0) == 0.0
    assert m.halo_thickness(1e6) > 0.99
    assert 0.7 < m.halo_thickness(18) < m.halo_thickness(30) < 1


def test_halo_rows_by_hand():
    n, k = 1000, 18
    r, f = m.radius(n, k), m.halo_thickness(k)
    assert math.isclose(n * 4 / 3 * math.pi * r**3, k)
    # 2 parts: one inner face of area 1 (both sides if the box is periodic)
    assert math.isclose(m.halo_rows(n, k, 2, periodic=False), n * f * r)
    assert math.isclose(m.halo_rows(n, k, 2, periodic=True), 2 * n * f * r)
    # 4 parts (2 x 2 x 1), non-periodic: two half faces and a quarter cylinder along z
    assert math.isclose(m.halo_rows(n, k, 4, periodic=False), n * f * (r + math.pi * r * r / 4))
    assert m.halo_rows(n, k, 1, periodic=True) == 0


@pytest.mark.parametrize("parts", [2, 4])
def test_halo_rows_match_the_real_partition(parts):
    """The model's mean halo against the halo rows the real partition gives (within 10 %)."""
    work = Workload(graphs=1, nodes=3000, neighbours=18)
    batch = random_particles(work)
    graph = GraphBuilder(kind="radius", radius=work.radius, max_num_neighbors=4 * 18 + 16)
    owner = coordinate_bisection(batch.pos, batch.batch, 1, parts)
    rows = [shard_batch(batch, graph, owner, rank, parts)[1].halo.numel() for rank in range(parts)]
    model = m.halo_rows(3000, 18, parts, periodic=False)
    assert abs(sum(rows) / parts - model) < 0.1 * model, (rows, model)


def test_step_model_overlap_and_efficiency():
    assert m.StepModel(compute_s=1.0, allreduce_s=0.5).step_s == 1.5
    assert m.StepModel(compute_s=1.0, allreduce_s=0.5, overlap_allreduce=True).step_s == 1.0  # hidden in 2/3 s
    assert math.isclose(m.StepModel(compute_s=1.0, allreduce_s=0.9, overlap_allreduce=True).step_s, 1.9 - 2 / 3)
    assert math.isclose(m.StepModel(compute_s=1.0, halo_s=0.3, interior_share=0.2).step_s, 1.1)
    assert m.efficiency(1.0, 1.25, 8, weak=True) == 0.8
    assert m.efficiency(8.0, 1.25, 8, weak=False) == 0.8


def test_net_dev_parser():
    text = (
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n"
        "    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0\n"
        "  eth0: 5362345    4321    0    0    0     0          0         0  7654321    5432    0    0    0     0       0          0\n"
    )
    assert parse_net_dev(text, "eth0") == (5362345, 7654321)
    with pytest.raises(ValueError, match="no interface 'eth1'"):
        parse_net_dev(text, "eth1")


def test_measured_csv_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("mode,hosts\ndata,1\n")
    with pytest.raises(ValueError, match=r"x\.csv: missing column"):
        read_measured(bad)


def test_update_page_replaces_only_the_generated_part(tmp_path):
    page = tmp_path / "p.md"
    page.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    update_page(page, "new\n")
    assert page.read_text() == f"intro\n{BEGIN}\nnew\n{END}\noutro\n"
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="p.md: expected one"):
        update_page(page, "new\n")


def test_docs_tables_are_what_the_command_makes():
    """docs/scaling.md between the markers = launch/scaling_model.py on docs/scaling_hosts.csv."""
    text = (ROOT / "docs" / "scaling.md").read_text()
    generated = text.split(BEGIN)[1].split(END)[0]
    assert generated == "\n" + markdown(read_measured(ROOT / "docs" / "scaling_hosts.csv")), (
        "run: python launch/scaling_model.py --update docs/scaling.md")


def test_report_tables_hold_every_gpu_count():
    tables = markdown(None)
    for p in (8, 64, 256):
        assert f"| {p} | InfiniBand NDR" in tables
