import torch

from scaleq.distributed.process_group import free_port
from scaleq.testing.distributed import engine_step, one_step, spawn, tiny_model, whole_batch

# fp32 on the CPU: the split sums gradients in another order than the whole batch does.
ATOL = 1e-6


def test_ddp_two_ranks_step_equals_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    spawn(engine_step, 2, free_port(), "torch", {}, str(out))
    result = torch.load(out, weights_only=False)
    assert result["sum_of_ranks"] == 3.0  # all_reduce_sum over ranks 0 and 1: 1 + 2

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = one_step(model, torch.optim.SGD(model.parameters(), lr=0.1), whole_batch())
    moved = 0
    for name, value in expected.items():
        torch.testing.assert_close(result["params"][name], value, atol=ATOL, rtol=0)
        moved += int(not torch.equal(value, before[name]))
    assert moved > len(expected) // 2  # the step changed the parameters, so the comparison means something


def test_single_process_engine_has_one_rank_and_identity_reductions():
    from scaleq.distributed import TorchEngine

    engine = TorchEngine(device="cpu")
    assert (engine.rank, engine.world_size, engine.is_main) == (0, 1, True)
    values = torch.tensor([1.0, 2.0])
    assert torch.equal(engine.all_reduce_sum(values), values)
    assert engine.broadcast_object("x") == "x"
