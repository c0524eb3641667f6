"""End-to-end training of a (quantized) model with overfitting curves: task fine-tuning, QAT and
Quadapter's end-to-end phase all train here, on the run's task (``quadapter.tasks``).

The curves are the point of the comparison: QAT on a small fine-tuning set improves its own
held-out metric while the out-of-distribution sets degrade. So every ``val_check_interval`` steps
(and before the first step) the callback asks the task for a curve point — the running train
metric (LM: ``train/ppl``; GLUE: the mean loss and the metrics on a train subset) and every held-out
set's ``val/<set>/<metric>`` — and logs it against the global step: in W&B (Lightning's
WandbLogger makes ``trainer/global_step`` the step metric, so the runs of a sweep overlay) and in
the local CSV.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar

from quadapter import interrupts
from quadapter.checkpoints import check_checkpoint
from quadapter.errors import RunInterrupted, TrainingError
from quadapter.methods.distill import DistillationLoss, load_teacher
from quadapter.methods.train_module import TrainModule
from quadapter.tasks import Task

log = logging.getLogger(__name__)


class Curves(Callback):
    """Logs the task's curve point (running train metric, held-out metrics) every
    ``every_n_steps`` optimizer steps, before the first step and at the last; at ``step_offset`` +
    the trainer's step (a later stage of a schedule continues the curve where the last one ended)."""

    def __init__(self, task: Task, every_n_steps: int, step_offset: int = 0):
        self.task, self.every_n_steps, self.step_offset = task, every_n_steps, step_offset
        self.history: list[dict[str, float]] = []
        self._loss_sum, self._loss_count = 0.0, 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history:  # a resumed run continues its curve on the same steps as an unbroken one
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._loss_sum += float(outputs.get("task_loss", outputs["loss"]))  # with KD: the task's term
        self._loss_count += 1
        # the last point too, here rather than at on_train_end: a checkpoint of the last batch then
        # holds it (a run resumed at max_steps runs no training hook again)
        if trainer.global_step % self.every_n_steps == 0 or trainer.global_step == trainer.max_steps:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.history or self.history[-1]["step"] != self.step_offset + trainer.global_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        mean = self._loss_sum / self._loss_count if self._loss_count else None
        self._loss_sum, self._loss_count = 0.0, 0
        was_training = pl_module.training
        pl_module.eval()
        step = self.step_offset + trainer.global_step
        row: dict[str, float] = {"step": step,
                                 **self.task.curve_point(pl_module.model, mean)}
        pl_module.train(was_training)
        self.history.append(row)
        bad = {k: v for k, v in row.items() if not math.isfinite(v)}
        if bad:  # the curve so far is kept (results.json training.curves); the run stops as failed
            raise TrainingError(f"non-finite curve value at step {step}: "
                                f"{', '.join(f'{k}={v}' for k, v in bad.items())}; lower the learning "
                                f"rates (method.lr.*) or check the quantizer ranges")
        for logger in trainer.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        log.info("step %d: %s", step,
                 ", ".join(f"{k}={v:.2f}" for k, v in row.items() if k != "step"))

    def state_dict(self) -> dict[str, Any]:  # the running train loss too: a resumed curve is exact
        return {"history": self.history, "loss_sum": self._loss_sum, "loss_count": self._loss_count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history[:] = state_dict["history"]  # in place: the run summary holds this list
        self._loss_sum = state_dict.get("loss_sum", 0.0)
        self._loss_count = state_dict.get("loss_count", 0)


class RandomState(Callback):
    """Saves the RNG state (dropout masks) in checkpoints, so a resumed run continues bit-identically."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class StopOnSignal(Callback):
    """Checkpoint and stop at the end of the batch in which SIGINT/SIGTERM arrived (``interrupts``).

    Listed after the curve callback, so the checkpoint holds the curve point of that step."""

    def __init__(self, last: Path):
        self.last = last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        name = interrupts.requested()
        if name:
            trainer.save_checkpoint(self.last)
            raise RunInterrupted(f"received {name} at step {trainer.global_step}; checkpoint saved to "
                                 f"{self.last}", name)


def _loss(ctx, distill: bool, teacher: nn.Module | None = None, layers: list[int] | None = None):
    """The task's loss, or the distillation loss where the run asks for one (``distill=kd``): from
    ``teacher`` when the method made one (the model it compressed), else from ``distill.teacher``'s
    saved run. ``layers``: the method's layer map, where ``distill.layers`` leaves it open."""
    spec = ctx.cfg.get("distill")
    if not distill or spec is None or spec.name == "none":
        return ctx.task.loss
    if teacher is None:
        teacher, record = load_teacher(ctx.cfg, ctx.tokenizer, ctx.device)
    else:
        record = {"teacher": "the loaded model before the method's transform", "temperature": spec.temperature,
                  "weights": dict(spec.weights)}
    configured = spec.get("layers")
    layers = list(configured) if configured is not None else layers
    ctx.summary["distill"] = record | {"layers": layers}
    return DistillationLoss(teacher, spec.temperature, **spec.weights, unpack=ctx.task.model_inputs,
                            layers=layers)


def train(ctx, param_groups: list[dict], train_cfg, phase: str, config_key: str,
          step_offset: int = 0, distill: bool = True, teacher: nn.Module | None = None,
          layers: list[int] | None = None,
          data: tuple[pl.LightningDataModule, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Train ``ctx.model``'s ``param_groups`` on the task's loss and training data; returns the
    curve summary.

    ``train_cfg`` holds steps, batch_size and warmup_steps (LM: also train_tokens, the fine-tuning
    data size); ``config_key`` is where it lives (e.g. ``method.train``), for messages.
    Checkpoints go to ``<run dir>/checkpoints/<phase>``; a run restarted in the same dir resumes
    from the last one. ``step_offset`` shifts the curve's steps (a schedule's later stages).
    ``distill``: train on the distillation loss when the run configures one (``distill=kd``);
    False for the FP fine-tuning a teacher is made of. ``teacher`` and ``layers``: a teacher the
    method holds (instead of a saved run) and its layer map (see ``_loss``). ``data``: training
    data the method chose (a data module and what it holds), instead of the task's.
    """
    cfg, model, task = ctx.cfg, ctx.model, ctx.task
    data, data_info = data or task.train_data(train_cfg, cfg.seed, config_key)
    curve_splits = task.curve_sets()
    every = cfg.trainer.val_check_interval
    curves = Curves(task, every, step_offset)
    ckpt_dir = Path(ctx.run_dir) / "checkpoints" / phase
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=every,
                                 save_top_k=0)
    module = TrainModule(model, param_groups, total_steps=train_cfg.steps,
                         warmup_steps=train_cfg.warmup_steps, loss=_loss(ctx, distill, teacher, layers))
    trainer = pl.Trainer(
        accelerator=cfg.trainer.accelerator, devices=cfg.trainer.devices,
        precision=cfg.trainer.precision, max_steps=train_cfg.steps,
        gradient_clip_val=cfg.trainer.gradient_clip_val, log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=cfg.trainer.enable_progress_bar, enable_model_summary=False,
        logger=ctx.loggers or False, default_root_dir=str(ctx.run_dir), limit_val_batches=0,
        callbacks=[curves, checkpoint, RandomState()]
        + ([LearningRateMonitor(logging_interval="step")] if ctx.loggers else [])
        + ([TQDMProgressBar(refresh_rate=10)] if cfg.trainer.enable_progress_bar else []))
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        check_checkpoint(last)  # a damaged file is a CheckpointError naming it, not a zip error
    trainer.callbacks.append(StopOnSignal(last))
    model.train()  # dropout as in pretraining; the curve callback evaluates in eval mode
    summary = {"phase": phase, "steps": train_cfg.steps, **data_info,
               "curve_splits": curve_splits, "curves": curves.history,
               "precision": trainer.precision}  # what Lightning runs (on a CPU 16-mixed is bf16-mixed)
    try:
        with interrupts.deferred():
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.is_file() else None)
    except BaseException:  # a failed or interrupted run still reports its curve so far
        ctx.summary["training"] = summary | {"stopped_at_step": trainer.global_step}
        raise
    model.eval()
    return summary
