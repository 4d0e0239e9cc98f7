import pytest
import torch

from scaleq.distributed.process_group import free_port
from scaleq.distributed.spawn import spawn
from tests.support.distributed import engine_step, one_step, tiny_model, whole_batch

pytestmark = [pytest.mark.deepspeed, pytest.mark.slow]

# Adam's first step is lr * g / (|g| + eps): with the usual eps = 1e-8 it is lr * sign(g) and would
# not notice a gradient of the wrong scale. eps = 1e-3 (about the gradients' size) makes the step
# depend on the gradient's magnitude. fp32: the split sums gradients in another order.
EPS, LR, ATOL = 1e-3, 1e-2, 2e-6


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_two_ranks_step_equals_one_process_on_the_whole_batch(tmp_path, stage):
    out = tmp_path / f"zero{stage}.pt"
    options = {
        "micro_batch_size": 4, "zero_stage": stage, "lr": LR, "weight_decay": 0.0,
        "config_overrides": {"optimizer": {"params": {"eps": EPS}}},
    }
    spawn(engine_step, 2, free_port(), "deepspeed", options, str(out))
    result = torch.load(out, weights_only=False)
    assert result["sum_of_ranks"] == 3.0
    assert result["votes"] == [True, False]

    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = one_step(model, torch.optim.Adam(model.parameters(), lr=LR, eps=EPS), whole_batch())
    moved = 0
    for name, value in expected.items():
        torch.testing.assert_close(result["params"][name], value, atol=ATOL, rtol=0)
        moved += int(not torch.equal(value, before[name]))
    assert moved > len(expected) // 2


def test_generated_config_maps_our_keys():
    from scaleq.distributed.deepspeed_engine import deepspeed_config

    config = deepspeed_config(micro_batch_size=8, zero_stage=3, gradient_accumulation=4, grad_clip=1.5,
                              precision="bf16", optimizer="adamw", lr=2e-3, weight_decay=0.01)
    assert config["zero_optimization"]["stage"] == 3
    assert config["gradient_accumulation_steps"] == 4 and config["gradient_clipping"] == 1.5
    assert config["optimizer"]["type"] == "AdamW" and config["optimizer"]["params"]["adam_w_mode"] is True
    assert config["optimizer"]["params"]["lr"] == 2e-3 and config["optimizer"]["params"]["weight_decay"] == 0.01
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    plain = deepspeed_config(micro_batch_size=8)
    assert plain["optimizer"]["params"]["adam_w_mode"] is False and "torch_autocast" not in plain


def test_epoch_end_steps_the_short_last_window_and_carries_nothing_over(tmp_path):
    """ZeRO-2, 2 ranks, accumulation 2, epochs of 5 and 3 micro-batches: DeepSpeed on its own would carry
    micro-batch 5 into the next epoch's first step; the engine steps it alone at the epoch's end
    (weighted 1, not 1/2), as plain Adam on the windows [0, 1], [2, 3], [4], [5, 6], [7] does."""
    from tests.support.accumulation import plain_steps, spawned_epochs, windows

    out = tmp_path / "zero2.pt"
    options = {
        "micro_batch_size": 1, "zero_stage": 2, "lr": LR, "weight_decay": 0.0, "gradient_accumulation": 2,
        "config_overrides": {"optimizer": {"params": {"eps": EPS}}},
    }
    spawn(spawned_epochs, 2, free_port(), "deepspeed", options, [5, 3], str(out))
    result = torch.load(out, weights_only=False)
    assert result["stepped"] == [False, True, False, True, True, False, True, True]

    model = tiny_model()
    expected = plain_steps(model, torch.optim.Adam(model.parameters(), lr=LR, eps=EPS), windows([5, 3], 2, 2))
    assert len(result["after_steps"]) == len(expected) == 5
    for step, (params, reference) in enumerate(zip(result["after_steps"], expected, strict=True)):
        for name, value in reference.items():
            torch.testing.assert_close(params[name], value, atol=ATOL, rtol=0,
                                       msg=lambda m, s=step, n=name: f"step {s + 1}, {n}: {m}")
