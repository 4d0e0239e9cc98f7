"""``train.rollout_every``: a short rollout of one validation trajectory at the end of an epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scaleq.rollout.rollout import linear_baseline, max_steps, reference, rollout
from scaleq.rollout.metrics import SUMMARY_STEPS, horizon_metrics, plot_metrics, write_metrics_csv
from scaleq.sample_options import first_input_frame

if TYPE_CHECKING:
    from scaleq.train.trainer import Trainer


def rollout_during_training(trainer: Trainer, epoch: int, tensorboard: Any | None, steps: int = 20) -> None:
    """The end-of-epoch hook of ``train.rollout_every``: roll the model out on validation
    trajectory 0 from its earliest start frame (up to ``steps`` steps), and on rank 0 write
    ``rollouts/epoch_<E>.csv`` and a small ``rollouts/epoch_<E>.png`` (MSE over the horizon,
    model against the Linear baseline) and TensorBoard scalars (rollout/mse_step_k) and the figure,
    at the optimizer step the other curves use.
    Every rank runs the model (a sharded engine needs all of them); nothing is trained."""
    dataset = trainer.eval_loaders["valid"].dataset
    start = first_input_frame(dataset.spec.velocity)
    horizon = min(steps, max_steps(dataset, [0], start))
    if horizon < 1:
        return
    ref = reference(dataset, [0], start, horizon)
    engine = trainer.engine
    model_run = rollout(trainer.model, ref, trainer.graph, device=engine.device, autocast=engine.autocast)
    baseline, baseline_name = linear_baseline()  # Linear's t is fitted only when the run ends
    base_run = rollout(baseline, ref, trainer.graph, device=engine.device)
    if not engine.is_main:
        return
    metrics = horizon_metrics(ref, model_run, base_run)
    folder = trainer.run_dir / "rollouts"
    write_metrics_csv(metrics, folder / f"epoch_{epoch:04d}.csv")
    png = plot_metrics(metrics, folder / f"epoch_{epoch:04d}.png", name=trainer.config.model.name,
                       baseline_name=baseline_name, small=True)
    if tensorboard is not None:
        step = trainer.state.step
        for row in metrics.rows[1:]:
            if row["step"] in SUMMARY_STEPS or row["step"] == horizon:
                tensorboard.add_scalar(f"rollout/mse_step_{row['step']}", row["mse"], step)
        import matplotlib.image

        image = matplotlib.image.imread(png)[..., :3]
        tensorboard.add_image("rollout/valid_0", image, step, dataformats="HWC")
