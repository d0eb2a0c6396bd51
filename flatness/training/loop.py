"""Training with ERM, AMP or SAM: ``train(TrainConfig(...), out_dir) -> out_dir``.

This module owns the run itself: the folder lock, building a run's pieces in a fixed order, starting
or restoring it, the epoch and step loop, and the checkpoints it writes. The config, the run folder
checks, the data feeding and the model/optimizer construction live in ``config``, ``run_folder``,
``feeding`` and ``construction``.

Everything on disk goes through ``flatness.formats.checkpoint`` (the run folder layout is documented there):
``config.json`` and ``init.pt`` at the start, ``last.pt`` + ``metrics.jsonl`` at the end of every
epoch, ``epoch-NNN.pt`` snapshots every ``save_every`` epochs (epoch 0 = the initial weights).

Reproducibility and resume
--------------------------
* The initial weights come from ``seed`` (drawn inside a forked RNG); the data order comes from a
  dedicated ``torch.Generator`` (seed ``seed``) whose state is stored in every checkpoint, with the
  global RNGs (augmentation draws from them) and the optimizer state.
* The learning rate is a closed-form function of the epoch (``lr_at``), so no scheduler state can
  drift: 4 epochs straight and 2 epochs + ``resume`` to 4 give bitwise-identical weights on the
  CPU (with the ``step`` or ``constant`` schedules; ``cosine`` depends on the total number of
  epochs, so extending a cosine run changes its remaining schedule).
* A run killed mid-epoch resumes from the last finished epoch and redoes the partial one.
* With ``stop_loss`` the run ends after the first epoch whose whole-training-set loss is <= it
  (``flatness.training.stopping``); a run that got there is finished, and resuming it does nothing.
* Gradient clipping (``grad_clip``) acts on the gradient of the optimizer's base step: for ERM the
  loop clips after the backward; for AMP/SAM the optimizer does it (``flatness.training.optim``), so the
  perturbation is built from plain gradients as docs/metrics.md defines.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from flatness.core import distributed, locking
from flatness.core.devices import resolve_device
from flatness.core.errors import DivergedError, FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.fileio import atomic_write_json
from flatness.core.losses import check_loss_value, default_loss
from flatness.core.paths import check_name, check_paths
from flatness.core.progress import progress_bar, show_plan
from flatness.data.batches import forward
from flatness.data.probe_data import ProbeData
from flatness.data.user_data import check_model_fits
from flatness.formats import checkpoint as ckpt
from flatness.sources.loading import is_user_dataset
from flatness.sources.losses import config_losses
from flatness.training import stopping
from flatness.training.config import TrainConfig, default_out_dir, lr_at
from flatness.training.construction import build_optimizer, initial_model
from flatness.training.cost import passes_per_step
from flatness.training.feeding import (
    DeviceFlags,
    EpochBatches,
    cpu_threads_for,
    device_flags,
    epoch_batches,
    to_device,
    training_splits,
)
from flatness.training.run_folder import prepare_folder, write_metrics

EVAL_BATCH_SIZE = 500


def train(
    config: TrainConfig,
    out_dir: str | None = None,
    resume: bool = False,
    progress: bool = False,
    verbose: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Train per ``config`` into the run folder ``out_dir``.

    Raises FlatnessError for bad input (nothing on disk touched) and DivergedError when the loss
    stops being finite (the last good checkpoint is kept).

    Args:
        config: the run's options.
        out_dir: the run folder (default ``checkpoints/<dataset>-<model>-<method>-s<seed>``).
        resume: continue the run stored there from its last finished epoch (``config`` may then
            differ from the stored one only in ``RESUMABLE_CHANGES``).
        progress: show a progress bar per epoch.
        verbose: print a line per epoch.
        on_epoch: called with each finished epoch's metrics record once it is saved (rank 0 only), e.g.
            ``flatness.training.tensorboard_log.epoch_logger``'s TensorBoard writer.

    Returns:
        ``out_dir``.
    """
    config = TrainConfig.from_dict(config.to_dict()).checked()
    out_dir = out_dir or default_out_dir(config)
    check_paths({}, {"--out": out_dir}, folders=["--out"])
    if config.data_dir is not None:
        check_name(config.data_dir, "--data-dir")
    # One writer per run folder: a second train (or resume) of it refuses at once. Under torchrun only
    # rank 0 writes, so only rank 0 locks (the launcher stops the other ranks when it fails).
    main_rank = not distributed.launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0
    with locking.exclusive(out_dir, "run folder") if main_rank else contextlib.nullcontext():
        return _train_locked(config, out_dir, resume, progress, verbose, main_rank, on_epoch=on_epoch)


def _train_locked(
    config: TrainConfig,
    out_dir: str,
    resume: bool,
    progress: bool,
    verbose: bool,
    main_rank: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """Train into ``out_dir`` with its lock held (``train``'s body); returns ``out_dir``.

    Args:
        config: the validated config asked for.
        out_dir: the run folder.
        resume: continue the run stored in ``out_dir``.
        progress: show a progress bar per epoch (rank 0 only).
        verbose: print a line per epoch (rank 0 only).
        main_rank: this process writes the run folder (not a non-zero torchrun rank).
        on_epoch: ``train``'s per-epoch hook.

    Returns:
        ``out_dir``.
    """
    state, config = prepare_folder(config, out_dir, resume, main_rank)
    run = _build_run(config, out_dir, state, main_rank)
    run.progress, run.verbose = progress and main_rank, verbose and main_rank
    run.on_epoch = on_epoch if main_rank else None
    start = _start_run(run) if state is None else _restore_run(run, state)
    if start <= config.epochs:
        show_plan(
            run.verbose and run.progress,  # train's progress display; a study's runs are planned by the study
            "train",
            f"{config.epochs - start + 1} epoch(s) ({start}-{config.epochs})",
            f"{len(run.batches)} steps of up to {config.batch_size} examples each",
            f"stop at loss {config.stop_loss:g}" if config.stop_loss is not None else "",
        )
    threads_before = torch.get_num_threads()
    threads = cpu_threads_for(run.model, run.device)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        _loop(run, start)
    finally:
        torch.set_num_threads(threads_before)
    return out_dir


@dataclass
class _Run:
    """The pieces of one training run that every epoch uses, built once by ``_train_locked``.

    Grouped so that the epoch loop and its helpers take one argument instead of fifteen; ``metrics``
    and ``step`` are the run's mutable record (the finished epochs and the optimizer steps taken).
    """

    config: TrainConfig
    out_dir: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: EpochBatches
    shuffle: torch.Generator  # the data order's generator, stored in every full checkpoint
    test_data: ProbeData
    device: torch.device
    flags: DeviceFlags
    spec: dict[str, Any]
    sources: dict[str, Any]
    main_rank: bool
    progress: bool = True
    verbose: bool = True
    # the training loss (mean over the batch; the one rule of flatness.core.losses) and what of the
    # model's output it sees (flatness.data.batches.model_output)
    loss_fn: Any = default_loss
    output_fn: Any = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    step: int = 0
    train_eval: ProbeData | None = None  # the whole training split, when the run has a stop_loss
    stop: dict[str, Any] | None = None  # the stop record once the run has ended (flatness.training.stopping)
    on_epoch: Callable[[dict[str, Any]], None] | None = None  # train()'s hook, given each saved epoch record
    # AMP/SAM: the epoch's sum of ‖δ‖ over its steps (a device tensor: no sync per step) and the steps
    perturbation: list[Any] = field(default_factory=lambda: [0.0, 0])
    config_dict: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.config_dict = self.config.to_dict()

    @property
    def last_path(self) -> str:
        """The run's ``last.pt`` (the last good checkpoint that a divergence message points to)."""
        return os.path.join(self.out_dir, ckpt.LAST)


def _build_run(config: TrainConfig, out_dir: str, state: dict[str, Any] | None, main_rank: bool) -> _Run:
    """Device, data, model, optimizer and data order of a run.

    The order of these steps is fixed: it decides which random numbers each one draws.

    Returns:
        The run, with the initial weights (a resumed run's are restored later by ``_restore_run``).
    """
    device = resolve_device(config.device)
    distributed.init_from_env(device)
    device = distributed.local_device(device)
    flags = device_flags(device)
    train_set, test_set, data_record = training_splits(config, main_rank)
    if config.batch_size > len(train_set):
        raise FlatnessError(f"batch size {config.batch_size} exceeds the {len(train_set)} training examples")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = flags.cudnn_benchmark

    model, spec, model_record = initial_model(config, train_set, state)

    loss_fn, output_fn = config_losses(config)  # --loss / --output (None: cross-entropy on the output)
    if model_record or is_user_dataset(config.dataset):
        check_model_fits(model, train_set, loss_fn, output_fn)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(config, model.parameters())
    shuffle = torch.Generator()
    shuffle.manual_seed(config.seed)
    batches = epoch_batches(config, train_set, device, flags)
    # The test split, decoded once and kept on the compute device; every epoch's test loss and
    # accuracy come from the same exact-mean evaluate() that probes and surfaces use.
    test_data = ProbeData.from_dataset(test_set, None, EVAL_BATCH_SIZE, device)
    sources = {"model": model_record or None, "dataset": data_record}
    run = _Run(config, out_dir, model, optimizer, batches, shuffle, test_data, device, flags, spec, sources, main_rank)
    run.loss_fn, run.output_fn = loss_fn or default_loss, output_fn
    run.train_eval = stopping.whole_train_data(config, train_set, device, EVAL_BATCH_SIZE)
    return run


def _save(run: _Run, path: str, epoch: int, full: bool) -> None:
    """Write a checkpoint of ``run`` at ``epoch`` to ``path``.

    Rank 0 alone writes; every rank holds the same state. ``full`` adds what a resume needs:
    optimizer, schedule, RNG and data order.
    """
    if not run.main_rank:
        return
    ckpt.save_checkpoint(
        path,
        run.model,
        model_spec=run.spec,
        config=run.config_dict,
        epoch=epoch,
        step=run.step,
        metrics=run.metrics,
        optimizer_state=run.optimizer.state_dict() if full else None,
        scheduler_state={"schedule": run.config.schedule, "epoch": epoch} if full else None,
        rng=ckpt.capture_rng() if full else None,
        extra={"shuffle_rng": run.shuffle.get_state(), stopping.STOP_KEY: run.stop} if full else None,
        sources=run.sources,
    )


def _start_run(run: _Run) -> int:
    """Seed the global RNG and write a new run's first files.

    Those are config.json, init.pt, epoch-000.pt, last.pt at epoch 0 and an empty metrics.jsonl.

    Returns:
        The first epoch to train (1).
    """
    if run.main_rank:
        os.makedirs(run.out_dir, exist_ok=True)
    torch.manual_seed(run.config.seed)  # the global RNG drives augmentation (and dropout)
    run.metrics, run.step = [], 0
    if run.main_rank:
        atomic_write_json(os.path.join(run.out_dir, ckpt.CONFIG), run.config_dict)
    _save(run, os.path.join(run.out_dir, ckpt.INIT), 0, full=False)
    if run.config.save_every:
        _save(run, os.path.join(run.out_dir, ckpt.snapshot_name(0)), 0, full=False)
    _save(run, run.last_path, 0, full=True)
    if run.main_rank:
        write_metrics(run.out_dir, run.metrics)
    return 1


def _restore_run(run: _Run, state: dict[str, Any]) -> int:
    """Put a resumed run back where its last.pt left it: weights, optimizer, RNGs, data order, metrics.

    Returns:
        The first epoch still to train (past ``config.epochs`` when there is nothing to do).
    """
    try:
        run.model.load_state_dict(state["model_state"])
    except RuntimeError:
        raise FlatnessError(f"{state['path']}: the stored weights do not fit the model") from None
    if state.get("optimizer_state"):
        run.optimizer.load_state_dict(state["optimizer_state"])
    if state.get("rng"):
        ckpt.restore_rng(state["rng"])
    if (state.get("extra") or {}).get("shuffle_rng") is not None:
        run.shuffle.set_state(state["extra"]["shuffle_rng"])
    run.metrics = list(state.get("metrics") or [])
    start, run.step = int(state["epoch"]) + 1, int(state.get("step", 0))
    run.stop = stopping.stored_record(state)
    if run.main_rank:
        atomic_write_json(os.path.join(run.out_dir, ckpt.CONFIG), run.config_dict)
        write_metrics(run.out_dir, run.metrics)  # repairs a metrics.jsonl a crash left behind
    if run.stop is not None and run.stop["reached"]:
        start = run.config.epochs + 1  # a run that reached its target loss is finished, whatever the cap
        if run.verbose:
            print(f"{run.out_dir}: reached the stop loss at epoch {run.stop['epoch']}; nothing to do")
    elif start > run.config.epochs and run.verbose:
        print(f"{run.out_dir}: already trained for {start - 1} epochs (asked {run.config.epochs}); nothing to do")
    return start


def _forward_module(model: nn.Module, config: TrainConfig, device: torch.device) -> nn.Module:
    """What the training step calls: the model, wrapped in DDP under torchrun and compiled when asked.

    DDP all-reduces the gradients in buckets during the backward. Parameters stay shared, so the
    optimizer and the checkpoint keep working on ``model``.
    """
    net = model
    if distributed.is_distributed():
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    return net


@dataclass(frozen=True)
class _Engine:
    """What every training step runs on, fixed for the whole run.

    ``net`` is the module the step calls (DDP-wrapped / compiled, sharing ``model``'s parameters);
    ``passes`` is the number of closure calls per step, of which all but the last build the
    perturbation (AMP: the first inner_iter, SAM: the first); with --local-perturbation those skip
    DDP's all-reduce, so each rank perturbs by its own shard.
    """

    net: nn.Module
    autocast: Any  # a reusable context manager: bf16 autocast, or a no-op
    rank: int
    world: int
    passes: int


@dataclass
class _StepRecord:
    """What the closure calls of one step have seen.

    How many ran, and the logits at theta (the first call's, before any perturbation) that the
    step's training accuracy comes from.
    """

    calls: int = 0
    logits: torch.Tensor | None = None


def _loop(run: _Run, start: int) -> None:
    """Train the epochs ``start`` .. ``config.epochs``, checkpointing and logging after each one."""
    config, device = run.config, run.device
    engine = _Engine(
        net=_forward_module(run.model, config, device),
        autocast=(
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if config.precision == "bf16"
            else contextlib.nullcontext()
        ),
        rank=distributed.rank(),
        world=distributed.world_size(),
        passes=passes_per_step(config),
    )
    for epoch in range(start, config.epochs + 1):
        began = time.perf_counter()
        lr = lr_at(config, epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        totals = _train_epoch(run, engine, epoch, lr)
        _finish_epoch(run, epoch, lr, totals, began)
        if run.stop is not None:
            if run.verbose:
                print(stopping.describe(run.stop), flush=True)
            break


def _train_epoch(run: _Run, engine: _Engine, epoch: int, lr: float) -> tuple[torch.Tensor, int, int]:
    """One pass over the training batches.

    Returns:
        ``(summed training loss as a float64 tensor, correct predictions, examples)`` over the global
        batches; raises DivergedError at the first step whose loss is not finite (on any rank).
    """
    run.model.train()
    run.perturbation = [0.0, 0]
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct, seen = 0, 0
    bar = progress_bar(run.progress, len(run.batches), f"epoch {epoch}/{run.config.epochs}", unit="batch")
    try:
        for i, (bx, by, global_size) in enumerate(run.batches.epoch(run.shuffle, engine.rank, engine.world), 1):
            value, logits, y = _train_step(run, engine, bx, by, global_size)
            if not math.isfinite(value):
                raise DivergedError(
                    f"training diverged: the loss is {value} at epoch {epoch}, step {i} of {len(run.batches)} "
                    f"(lr {lr:g}); the last good checkpoint is kept: {run.last_path} (epoch {epoch - 1})"
                )
            loss_sum += value * y.shape[0]
            if logits.dim() == 2 and y.dim() == 1:  # class scores; kept only where accuracy is defined
                correct += int((logits.argmax(1) == y).sum())
            seen += int(y.shape[0])
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{value:.4f}")
    finally:
        bar.close()
    if engine.world > 1:  # the epoch's training loss and accuracy over the global batches
        totals = torch.tensor([float(loss_sum), correct, seen], dtype=torch.float64, device=run.device)
        distributed.all_reduce_sum_(totals)
        loss_sum, correct, seen = totals[0].cpu(), int(totals[1]), int(totals[2])
    return loss_sum, correct, seen


def _train_step(
    run: _Run, engine: _Engine, bx: torch.Tensor, by: torch.Tensor, global_size: int
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One optimizer step on the batch ``(bx, by)`` (this rank's share of ``global_size`` examples).

    Returns:
        ``(the loss at theta, NaN on every rank when any rank's is not finite; the logits at theta;
        the targets on the device)``.
    """
    config = run.config
    x, y = to_device((bx, by), run.device, run.flags)
    if config.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    # DDP averages gradients over ranks; scaling each rank's mean by its share makes the average the
    # exact mean over the global batch (also when shares are uneven).
    scale = y.shape[0] * engine.world / global_size
    record = _StepRecord()
    # Bound now, not closed over the loop's variables: AMP/SAM call it 1 + inner_iter / 2 times
    # within this step, always on this step's batch.
    closure = functools.partial(_forward_backward, run, engine, record, x, y, scale)
    if config.method == "erm":
        loss = closure()
        if torch.isfinite(loss) and config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        if torch.isfinite(loss):
            run.optimizer.step()
    else:
        loss = run.optimizer.step(closure)
        if run.optimizer.perturbation_norm is not None:
            run.perturbation = [run.perturbation[0] + run.optimizer.perturbation_norm, run.perturbation[1] + 1]
    run.step += 1
    value = float(loss.detach())
    if engine.world > 1:  # every rank must stop together when any rank's loss is not finite
        flag = torch.tensor([0.0 if math.isfinite(value) else 1.0], device=run.device)
        distributed.all_reduce_sum_(flag)
        if flag.item() > 0 and math.isfinite(value):
            value = float("nan")
    return value, record.logits, y


def _forward_backward(
    run: _Run, engine: _Engine, record: _StepRecord, x: torch.Tensor, y: torch.Tensor, scale: float
) -> torch.Tensor:
    """The optimizer's closure: zero the gradients, forward, cross-entropy, backward.

    Returns:
        The batch's mean loss (unscaled); the first call's logits go to ``record``.
    """
    record.calls += 1
    run.optimizer.zero_grad(set_to_none=True)
    local = engine.world > 1 and run.config.local_perturbation and record.calls < engine.passes
    with engine.net.no_sync() if local else contextlib.nullcontext():
        with engine.autocast:
            # forward: tuple/dict inputs and a tuple, dict or ModelOutput output work as everywhere else
            logits = forward(engine.net, x, run.output_fn)
        loss = check_loss_value(run.loss_fn(logits, y), run.loss_fn)
        (loss * scale if engine.world > 1 else loss).backward()
    if record.logits is None:
        record.logits = logits.detach()
    return loss


def _finish_epoch(run: _Run, epoch: int, lr: float, totals: tuple[torch.Tensor, int, int], began: float) -> None:
    """Evaluate on the test split, record the epoch's metrics, checkpoint, and print its line.

    Raises DivergedError (before anything is written) when the test loss is not finite.
    """
    loss_sum, correct, seen = totals
    test_loss, test_acc = evaluate(run.model, run.test_data, run.loss_fn, run.output_fn)
    if not math.isfinite(test_loss):
        raise DivergedError(
            f"training diverged: the test loss is {test_loss} after epoch {epoch} "
            f"(step {run.step}); the last good checkpoint is kept: {run.last_path} (epoch {epoch - 1})"
        )
    whole = stopping.measure(run.model, run.train_eval, run.loss_fn, run.output_fn)
    seconds = time.perf_counter() - began
    record = {
        "epoch": epoch,
        "lr": lr,
        "train_loss": float(loss_sum) / seen,
        "train_acc": correct / seen if test_acc is not None else None,  # None: no accuracy for this loss
        "test_loss": test_loss,
        "test_acc": test_acc,
        **whole,
        # AMP/SAM: the mean ‖δ‖ over the epoch's steps (rank 0's: the global batch's unless --local-perturbation)
        **({"perturbation_norm": float(run.perturbation[0]) / run.perturbation[1]} if run.perturbation[1] else {}),
        "seconds": round(seconds, 3),
    }
    run.metrics.append(record)
    config = run.config
    run.stop = stopping.end_record(config.stop_loss, epoch, config.epochs, whole.get("full_train_loss"))
    if config.save_every and epoch % config.save_every == 0:
        _save(run, os.path.join(run.out_dir, ckpt.snapshot_name(epoch)), epoch, full=False)
    matched = os.path.join(run.out_dir, ckpt.MATCHED)
    # written before last.pt: a run killed in between redoes this epoch and writes it again, never skips it
    if stopping.matched_now(config.match_loss, os.path.isfile(matched), whole.get("full_train_loss")):
        _save(run, matched, epoch, full=False)
    _save(run, run.last_path, epoch, full=True)
    write_metrics(run.out_dir, run.metrics)
    if run.on_epoch is not None:
        run.on_epoch(record)
    if run.verbose:
        print(
            f"epoch {epoch:3d}/{config.epochs}  lr {lr:.4g}  train loss {record['train_loss']:.4f} "
            + (f"acc {record['train_acc']:.4f}  " if test_acc is not None else "")
            + f"test loss {test_loss:.4f} "
            + (f"acc {test_acc:.4f}  " if test_acc is not None else " ")
            + (f"whole-train loss {whole['full_train_loss']:.4f}  " if whole else "")
            + f"{seconds:.1f}s",
            flush=True,
        )
