"""Gradient accumulation: windows restart every epoch, the epoch's short last window is stepped
(weighted by its own length), DDP all-reduces once per optimizer step, and no checkpoint is
written inside a window."""

import pytest
import torch

from scaleq.distributed.accumulation import AccumulationWindow
from scaleq.distributed.process_group import free_port
from scaleq.distributed.spawn import spawn
from scaleq.losses import position_mse
from tests.support.accumulation import engine_epochs, graphs, plain_steps, spawned_epochs, windows
from tests.support.distributed import tiny_model

# fp32 on the CPU: a window's graphs are summed in another order than the whole batch's.
ATOL = 1e-6


def assert_same_steps(got, expected, atol=ATOL):
    assert len(got) == len(expected)
    for step, (params, reference) in enumerate(zip(got, expected, strict=True)):
        for name, value in reference.items():
            torch.testing.assert_close(params[name], value, atol=atol, rtol=0,
                                       msg=lambda m, s=step, n=name: f"step {s + 1}, {n}: {m}")


def test_an_epoch_of_five_with_accumulation_two_has_windows_of_two_two_and_one():
    window = AccumulationWindow(2)
    window.start_epoch(5)
    lengths, closed = [], []
    for _ in range(5):
        lengths.append(window.length)
        closed.append(window.advance())
    assert lengths == [2, 2, 2, 2, 1] and closed == [False, True, False, True, True]
    window.start_epoch(5)  # the next epoch starts a fresh window
    assert (window.position, window.length, window.closing) == (0, 2, False)
    window.start_epoch(5, done=4)  # resumed before the epoch's last micro-batch: a window of one
    assert (window.length, window.advance()) == (1, True)


def test_a_new_epoch_or_a_checkpoint_inside_a_window_is_refused():
    window = AccumulationWindow(3)
    window.start_epoch(7)
    window.advance()
    with pytest.raises(RuntimeError, match="1 of 3 micro-batches"):
        window.require_boundary("save a checkpoint")
    with pytest.raises(RuntimeError, match="pending"):
        window.start_epoch(7)
    window.advance(), window.advance()
    window.require_boundary("save a checkpoint")  # the window closed: nothing pending


def test_leftover_micro_batch_is_stepped_at_the_epoch_end_and_not_carried_into_the_next():
    """Epochs of 5 and 3 micro-batches, accumulation 2: steps on [0, 1], [2, 3], [4] (weighted by
    1, not 1/2), then [5, 6], [7]; plain SGD on those windows' mean losses gives the same weights."""
    from scaleq.distributed import TorchEngine

    model = tiny_model()
    engine = TorchEngine(device="cpu", gradient_accumulation=2)
    wrapped = engine.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    got = engine_epochs(engine, wrapped, [5, 3])
    reference = tiny_model()
    expected = plain_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1), windows([5, 3], 2, 1))
    assert len(expected) == 5
    assert_same_steps(got, expected)


def test_the_engine_refuses_a_checkpoint_inside_a_window(tmp_path):
    from scaleq.distributed import TorchEngine

    model = tiny_model()
    engine = TorchEngine(device="cpu", gradient_accumulation=2)
    wrapped = engine.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1))
    engine.start_epoch(2)
    for index in range(2):
        batch = graphs([index])
        with engine.micro_batch():
            engine.backward(position_mse(wrapped(batch)["pos"], batch.target))
        if not engine.step():  # half a window: its gradient would be in no checkpoint
            with pytest.raises(RuntimeError, match="1 of 2 micro-batches of an accumulation window"):
                engine.save(tmp_path / "mid.pt", {})
            assert not (tmp_path / "mid.pt").exists()
    engine.save(tmp_path / "end.pt", {})
    assert (tmp_path / "end.pt").exists()


def test_ddp_all_reduces_once_per_optimizer_step_and_matches_one_process(tmp_path):
    """2 ranks, accumulation 4, epochs of 8 and 3 micro-batches: DDP's gradient all-reduce runs in
    the last backward of each window only (no_sync before it), and the weights after every step
    equal plain SGD on the window's graphs of both ranks."""
    out = tmp_path / "ddp.pt"
    spawn(spawned_epochs, 2, free_port(), "torch", {"gradient_accumulation": 4}, [8, 3], str(out))
    result = torch.load(out, weights_only=False)
    assert result["stepped"] == [False, False, False, True] * 2 + [False, False, True]
    per_sync = result["all_reduces"][3]  # buckets per gradient exchange (one for this small model)
    assert per_sync >= 1
    assert result["all_reduces"] == [per_sync * n for n in (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3)]

    reference = tiny_model()
    expected = plain_steps(reference, torch.optim.SGD(reference.parameters(), lr=0.1), windows([8, 3], 4, 2))
    assert_same_steps(result["after_steps"], expected)
