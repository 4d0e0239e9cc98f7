"""What a restarted Ray Train worker group says it waits for (scaleq/launchers/ray_waiting.py), from
``ray.nodes()`` rows as Ray returns them; the line itself is checked in a real cluster that lost a
node (tests/distributed/test_lost_node.py)."""

import pytest

pytestmark = pytest.mark.ray


def node(name: str, cpus: float, alive: bool = True, gpus: float = 0) -> dict:
    resources = {"CPU": cpus, "memory": 1e9, **({"GPU": gpus} if gpus else {})}
    return {"Alive": alive, "NodeManagerHostname": name, "NodeManagerAddress": f"10.0.0.{cpus:g}",
            "Resources": resources}


def test_what_is_missing_per_placement_strategy():
    from scaleq.launchers.ray_waiting import describe, missing

    one_left = [node("node1", 2), node("node2", 2, alive=False)]
    assert missing(2, {"CPU": 1}, "STRICT_SPREAD", one_left) == "1 more node with CPU 1"
    assert missing(3, {"CPU": 1}, "STRICT_SPREAD", one_left) == "2 more nodes with CPU 1"
    assert missing(2, {"CPU": 1}, "PACK", one_left) is None  # both workers fit on node1
    assert missing(4, {"CPU": 1}, "PACK", one_left) == "a node with CPU 2"
    assert missing(4, {"CPU": 1}, "STRICT_PACK", one_left) == "a node with CPU 4"
    assert missing(2, {"CPU": 1, "GPU": 1}, "SPREAD", [node("a", 8, gpus=1)]) == "a node with CPU 1, GPU 1"
    assert missing(2, {"CPU": 1}, "STRICT_SPREAD", [node("a", 2), node("b", 2)]) is None
    assert describe(one_left) == "node1 (10.0.0.2) CPU 2"
