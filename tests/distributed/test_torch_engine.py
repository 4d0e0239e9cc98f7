import pytest
import torch

from scaleq.distributed.process_group import free_port
from scaleq.distributed.spawn import spawn
from tests.support.distributed import engine_step, one_step, tiny_model, whole_batch

# fp32 on the CPU: the split sums gradients in another order than the whole batch does.
ATOL = 1e-6


def test_ddp_two_ranks_step_equals_one_process_on_the_whole_batch(tmp_path):
    out = tmp_path / "ddp.pt"
    spawn(engine_step, 2, free_port(), "torch", {}, str(out))
    result = torch.load(out, weights_only=False)
    assert result["sum_of_ranks"] == 3.0  # all_reduce_sum over ranks 0 and 1: 1 + 2
    assert result["votes"] == [True, False]  # any_rank: rank 1's flag reaches rank 0, and no flag is none
    assert result["host_group"] == (None, 3)  # CPU ranks use the default (gloo) group; CUDA ranks' one sums too

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


def test_gradient_accumulation_of_two_halves_equals_one_whole_batch_step():
    from scaleq.distributed import TorchEngine
    from scaleq.losses import position_mse
    from tests.support.distributed import rank_shard

    model = tiny_model()
    engine = TorchEngine(device="cpu", gradient_accumulation=2)
    wrapped = engine.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for half in (0, 1):
        shard = rank_shard(half, 2)
        engine.backward(position_mse(wrapped(shard)["pos"], shard.target))
        engine.step()
        if half == 0:  # no optimizer step after the first micro-batch
            assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    reference = tiny_model()
    expected = one_step(reference, torch.optim.SGD(reference.parameters(), lr=0.1), whole_batch())
    for name, value in expected.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=ATOL, rtol=0)


def test_engine_config_rejects_bad_keys_with_their_names():
    from scaleq.config import ConfigError, config_from_dict

    base = {"data": {"path": "x"}}
    with pytest.raises(ConfigError, match="engine.zero_stage must be 0, 1, 2 or 3"):
        config_from_dict({**base, "engine": {"kind": "deepspeed", "zero_stage": 4}})
    with pytest.raises(ConfigError, match="need engine.kind: deepspeed"):
        config_from_dict({**base, "engine": {"zero_stage": 2}})
    with pytest.raises(ConfigError, match="engine.kind"):
        config_from_dict({**base, "engine": {"kind": "horovod"}})
    assert config_from_dict({**base, "engine": {"kind": "deepspeed", "zero_stage": 3}}).engine.zero_stage == 3
