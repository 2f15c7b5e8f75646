"""Training: one loop helper (progress, JSONL metrics, atomic checkpoints, exact resume) and small
stage functions built on it (``fit_predictor``, ``fit_oracle``, ``fit_policy``, ``fit_joint``).

Exact resume: a stage checkpoints every piece of state that decides what happens next — module and
optimizer state, the batch source, and the torch / numpy / Python RNGs — so a run killed at any
point and restarted gives the same final weights as an uninterrupted one. Batch sources are either
a pure function of ``(seed, step)`` (:class:`EpochBatches`) or carry a checkpointed generator
(:class:`GeneratedBatches`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoints import (
    CheckpointError,
    WriteError,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from .objectives import gain_loss, joint_loss, l2s_stage1_loss, l2s_stage2_loss
from .steps import StepModel, index_state, unroll
from .stoptime import StopTime

__all__ = [
    "Interrupted",
    "Diverged",
    "diverged",
    "stop_on_signals",
    "install_stop_handlers",
    "request_stop",
    "seed_everything",
    "set_threads",
    "distributed_world",
    "is_main_process",
    "shard",
    "average_gradients",
    "LoopSettings",
    "MetricsLog",
    "train_loop",
    "optimize",
    "ValidationSchedule",
    "EpochBatches",
    "GeneratedBatches",
    "policy_hazards",
    "fit_predictor",
    "fit_oracle",
    "fit_policy",
    "fit_gain_policy",
    "fit_gain_head",
    "fit_joint",
]

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]  # (predictions (B, T, ...), targets) -> (B, T)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: the running stage saved a checkpoint; rerunning resumes.

    Like ``KeyboardInterrupt``, not an ``Exception``: code that catches ``Exception`` around a
    training loop (a library's, a user's) lets it through instead of carrying on."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    def __reduce__(self):  # a worker process sends it back to the runner pickled
        return (type(self), (self.signum,))


class WorkerDied(RuntimeError):
    """A worker process of a run ended without a result or an error: killed by the operating
    system (out of memory) or by a signal sent to it alone."""


class Diverged(RuntimeError):
    """A training loss or gradient became NaN or infinite (nothing of that step is logged or
    saved)."""


def diverged(
    what: str,
    step: int,
    stage: str,
    settings: LoopSettings | None,
    advice: str = "Lower the learning rate or choose other settings.",
) -> Diverged:
    """The :class:`Diverged` error of a training ``stage``: what was not finite, at which step,
    in which job (``settings.tags``), and what to change."""
    tags = settings.tags if settings is not None else {}
    where = " ".join(f"{k} {v}" for k, v in tags.items())
    return Diverged(
        f"training diverged: {what} at step {step} of stage {stage!r}"
        f"{' (' + where + ')' if where else ''}; the last checkpoint is kept. {advice}"
    )


_stop_signal: int | None = None
_loops_running = 0


def request_stop(signum: int, frame: Any = None) -> None:
    """Signal handler: inside a training loop, stop after the current step (which is then
    checkpointed); outside one, or at a second signal, stop at once."""
    global _stop_signal
    first = _stop_signal is None
    _stop_signal = signum
    if _loops_running == 0 or not first:
        raise Interrupted(signum)


def stop_signal() -> int | None:
    """The SIGINT or SIGTERM that arrived since the handlers were installed, if any."""
    return _stop_signal


def forget_stop_signal() -> None:
    """Forget a signal an earlier run in this process received."""
    global _stop_signal
    _stop_signal = None


def install_stop_handlers() -> dict[int, Any]:
    """Make SIGINT and SIGTERM end training cleanly (see :class:`Interrupted`); returns the
    previous handlers."""
    forget_stop_signal()
    return {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM end training cleanly (in the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = install_stop_handlers()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int) -> None:
    """Set torch's intra-op thread count (small CPU models are often fastest with 1)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1; got {threads}")
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- data parallelism (torchrun)
#
# Under torchrun every rank draws the same global batch (same seeds, same batch source state), trains
# on its shard of the rows and averages gradients, so all ranks hold identical weights, optimizer and
# RNG state; rank 0 alone writes metrics and checkpoints. With a batch size divisible by the world
# size and losses averaged over rows, a step equals the single-process step on the whole batch.
# Not with BatchNorm over the split rows: each rank normalises by its shard's statistics, and the
# ranks' running statistics drift apart (rank 0's are saved). Few-shot's split is by task, each
# task normalised on its own, so it is exact there; elsewhere use SyncBatchNorm or one process.


def distributed_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without an initialised process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return distributed_world()[0] == 0


def shard(batch: Any) -> Any:
    """This rank's rows (``rank::world_size``) of every tensor of a (nested) batch."""
    rank, world = distributed_world()
    return batch if world == 1 else index_state(batch, slice(rank, None, world))


def average_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """All-reduce and average the gradients of ``parameters`` over ranks (no-op on one process)."""
    _, world = distributed_world()
    if world == 1:
        return
    for p in parameters:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= world


# ---------------------------------------------------------------- metrics and RNG state


class MetricsLog:
    """Append-only JSONL metrics, one record per line, each with ``stage`` and ``step`` (and the
    loop's tags, e.g. ``job``). Each record is one ``write`` on an append-mode file, so worker
    processes can share a file; a torn last line (a process killed mid-write) is skipped by
    :meth:`read` and removed by :meth:`keep_only`."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:  # a full disk: said like a failed checkpoint, not a traceback
            raise WriteError(
                error.errno,
                f"could not append to {self.path} ({error.strerror or error}); a partly written "
                "last line is dropped when the run resumes",
            ) from None

    def read(self) -> list[dict[str, Any]]:
        if self.path is None or not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line
        return records

    def logged_steps(self, stage: str, tags: dict[str, Any]) -> set[int]:
        """Steps of ``stage`` (with these tags) already in the file: not written again."""
        return {
            r["step"]
            for r in self.read()
            if r.get("stage") == stage and all(r.get(k) == v for k, v in tags.items())
        }

    def keep_only(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrite the file without the records ``keep`` rejects (and without a torn line). Not
        safe while another process appends: the runner calls it before its workers start."""
        if self.path is None or not self.path.exists():
            return
        data = self.path.read_bytes()
        records = self.read()
        kept = [r for r in records if keep(r)]
        if len(kept) < len(records) or (data and not data.endswith(b"\n")):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout etc. on a GPU
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- the loop


@dataclass
class LoopSettings:
    """Where and how often a training loop records itself.

    checkpoint_dir: stage checkpoints ``<dir>/<stage>.pt`` (None: no checkpoints, no resume).
    checkpoint_every: steps between checkpoints (one is always written at the end).
    metrics_path: JSONL file for metrics (None: not written).
    log_every: steps between metric records.
    progress: show a tqdm bar; None shows it only when stderr is a terminal.
    tags: added to every metric record (the job runner tags each record with its job).
    owner: whose the checkpoints are, kept in each: one saved by another owner is refused on
        resume (None: ``tags``; the job runner adds a digest of the job's settings, so that a
        file copied from a run with other settings is refused too).
    clock: called at every checkpoint, its result kept in it (the job runner's elapsed times,
        so that a resumed job counts the time spent before the interruption).
    stages_run: the stages this job has run so far (the job runner shares one set among the
        settings of a job): a second loop of the same stage is refused, since it would take
        the first one's checkpoint as its own finished stage (None: not checked).
    """

    checkpoint_dir: str | Path | None = None
    checkpoint_every: int = 1000
    metrics_path: str | Path | None = None
    log_every: int = 50
    progress: bool | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, Any] | None = None
    clock: Callable[[], dict[str, Any]] | None = None
    stages_run: set[str] | None = None

    def __post_init__(self):
        for name in ("checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopSettings.{name} must be >= 1; got {getattr(self, name)}")


def _scalar(value: Any) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def _stateful(objects: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in objects.items() if v is not None and hasattr(v, "state_dict")}


def _tags_text(tags: dict[str, Any]) -> str:
    # As JSON text: any tag the metrics log can write (a NumPy float, a str Enum) stays
    # loadable with weights_only=True.
    return json.dumps(tags, sort_keys=True)


def check_owner(
    saved: dict[str, Any], path: Path, stage: str, tags: dict[str, Any], recover: str | None = None
) -> None:
    """Refuse a checkpoint saved by another stage or owner (a file copied by hand between run
    directories or jobs would otherwise resume silently from someone else's weights). Files
    saved before checkpoints recorded their tags are taken as they are, and the settings digest
    is compared only where both sides have one (files saved before it was kept, a caller that
    does not know the settings)."""
    saved_tags = saved.get("tags", tags)
    if isinstance(saved_tags, str):
        saved_tags = json.loads(saved_tags)
    if "settings" not in saved_tags or "settings" not in tags:
        saved_tags, tags = ({k: v for k, v in t.items() if k != "settings"}
                            for t in (saved_tags, tags))  # fmt: skip
    expected = (stage, _tags_text(tags))
    owner = (saved.get("stage", stage), _tags_text(saved_tags))
    if owner != expected:
        text = lambda who: f"stage {who[0]}, tags {who[1]}"  # noqa: E731
        raise CheckpointError(
            f"{path} was saved by {text(owner)}, not by {text(expected)} (a file copied from "
            "another job or stage, or from a run with other settings?). It was not loaded. "
            + (recover or "Delete it and rerun the same command: the stage is trained again.")
        )


def train_loop(
    stage: str,
    num_steps: int,
    step_fn: Callable[[int], dict[str, float]],
    state: dict[str, Any],
    settings: LoopSettings | None = None,
) -> dict[str, float]:
    """Call ``step_fn(step)`` for steps ``0..num_steps-1``, resuming from this stage's checkpoint.

    ``state`` names every object whose ``state_dict()`` must survive a restart (modules,
    optimizers, schedulers, batch sources). ``step_fn`` returns scalar metrics; they are logged
    every ``log_every`` steps. A finished stage is skipped on rerun (its final state is restored).
    Returns the last step's metrics (kept in the checkpoint, so a skipped stage returns them too).
    """
    settings = settings or LoopSettings()
    if settings.stages_run is not None:
        if stage in settings.stages_run:
            raise ValueError(
                f"stage {stage!r} has already run in this job: give the second loop its own "
                "stage= name (it would resume from the first one's checkpoint)"
            )
        settings.stages_run.add(stage)
    objects = _stateful(state)
    main = is_main_process()
    log = MetricsLog(settings.metrics_path if main else None)
    path = Path(settings.checkpoint_dir) / f"{stage}.pt" if settings.checkpoint_dir else None
    owner = settings.tags if settings.owner is None else settings.owner

    def checkpoint(step_done: int) -> None:
        if path is not None and main:
            save_checkpoint(
                path,
                {
                    "stage": stage,
                    "tags": _tags_text(owner),  # whose it is, e.g. {"job": "l2s-s0", ...}
                    "step": step_done,
                    "num_steps": num_steps,
                    "state": {name: obj.state_dict() for name, obj in objects.items()},
                    "rng": _rng_state(),
                    "metrics": metrics,
                    **({"clock": settings.clock()} if settings.clock else {}),
                },
            )

    start = 0
    metrics: dict[str, float] = {}
    if path is not None and path.exists():
        saved = load_checkpoint(path)
        check_owner(saved, path, stage, owner)
        if saved["step"] > num_steps:  # weights of more steps than asked for
            raise CheckpointError(
                f"checkpoint {path} is at step {saved['step']} of a run of "
                f"{saved.get('num_steps', '?')} steps; this one asks for {num_steps} (the longer "
                "run's weights would be returned as this one's): give it another checkpoint"
            )
        missing = set(objects) - set(saved["state"])
        if missing:
            raise ValueError(f"checkpoint {path} lacks state for {sorted(missing)}")
        for name, obj in objects.items():
            obj.load_state_dict(saved["state"][name])
        _set_rng_state(saved["rng"])
        start = saved["step"]
        metrics = saved.get("metrics", {})
    # Steps logged before an interruption are redone identically; they are not logged twice.
    logged = log.logged_steps(stage, settings.tags) if start > 0 else set()

    show = main and (settings.progress if settings.progress is not None else sys.stderr.isatty())
    global _loops_running
    _loops_running += 1
    try:
        with tqdm(total=num_steps, initial=start, desc=stage, disable=not show, leave=False) as bar:
            for step in range(start, num_steps):
                metrics = {k: _scalar(v) for k, v in step_fn(step).items()}
                loss = metrics.get("loss", 0.0)
                if not math.isfinite(loss):
                    raise diverged(f"loss {loss}", step, stage, settings)
                bar.update(1)
                if (step % settings.log_every == 0 or step == num_steps - 1) and step not in logged:
                    log.write({**settings.tags, "stage": stage, "step": step, **metrics})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in list(metrics.items())[:3]})
                if _stop_signal is not None:
                    checkpoint(step + 1)
                    raise Interrupted(_stop_signal)
                if (step + 1) % settings.checkpoint_every == 0 and step + 1 < num_steps:
                    checkpoint(step + 1)
            # Still inside the loop's count: a signal during this save waits for it to finish.
            if start < num_steps or (path is not None and not path.exists()):  # (0 steps too)
                checkpoint(num_steps)
    finally:
        _loops_running -= 1
    if _stop_signal is not None:
        raise Interrupted(_stop_signal)
    return metrics


# ---------------------------------------------------------------- batch sources


class ValidationSchedule:
    """A training stage's scheduler (called after every update) that chooses on validation.

    Every ``every`` updates and after the last one it calls ``evaluate() -> {"score": ...,
    other measures}`` (higher scores are better; the module is put in eval mode for it), keeps a
    copy of the best weights, and once the score has not improved for ``patience`` evaluations
    multiplies the learning rate by ``factor`` (at most ``max_drops`` times). ``history`` holds
    ``{"step", "score", other measures, "cpu_seconds"}`` per evaluation, with the process CPU
    time the stage has used so far.
    Checkpointed with the stage (``state_dict``), so a resumed stage continues exactly.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluate: Callable[[], dict[str, float]],
        total_steps: int,
        every: int,
        patience: int,
        factor: float = 0.1,
        max_drops: int = 1,
    ):
        self.module, self.optimizer, self.evaluate = module, optimizer, evaluate
        self.total_steps, self.every, self.patience = total_steps, every, patience
        self.factor, self.max_drops = factor, max_drops
        self.steps_done, self.best_score, self.best_step = 0, -math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale, self.drops = 0, []
        self.history: list[dict[str, float]] = []
        self._cpu_before, self._cpu_start = 0.0, time.process_time()

    def cpu_seconds(self) -> float:
        return self._cpu_before + time.process_time() - self._cpu_start

    def step(self) -> None:
        self.steps_done += 1
        if self.steps_done % self.every and self.steps_done != self.total_steps:
            return
        # Each submodule's own flag back afterwards (``train(was_training)`` put a submodule
        # kept in eval, a frozen BatchNorm, back in training), also when evaluate raises.
        flags = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        try:
            measures = {k: float(v) for k, v in self.evaluate().items()}
        finally:
            for m, training in flags:
                m.training = training
        score = measures["score"]
        self.history.append(
            {"step": self.steps_done, **measures, "cpu_seconds": self.cpu_seconds()}
        )
        if score > self.best_score:
            self.best_score, self.best_step, self.stale = score, self.steps_done, 0
            self.best_state = copy.deepcopy(self.module.state_dict())
            return
        self.stale += 1
        if self.stale >= self.patience and len(self.drops) < self.max_drops:
            for group in self.optimizer.param_groups:
                group["lr"] *= self.factor
            self.drops.append(self.steps_done)
            self.stale = 0

    def restore_best(self) -> None:
        """Load the best weights seen (the stage's chosen checkpoint) into the module."""
        if self.best_state is None:
            raise ValueError("no validation score was a number: there are no best weights")
        self.module.load_state_dict(self.best_state)

    def summary(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_step": self.best_step,
            "lr_drop_steps": list(self.drops),
            "curve": list(self.history),
            "cpu_seconds": self.cpu_seconds(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps_done": self.steps_done,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "stale": self.stale,
            "drops": list(self.drops),
            "history": list(self.history),
            "cpu_seconds": self.cpu_seconds(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.best_score = state["steps_done"], state["best_score"]
        self.best_step, self.best_state = state["best_step"], state["best_state"]
        self.stale, self.drops = state["stale"], list(state["drops"])
        self.history = list(state["history"])
        self._cpu_before, self._cpu_start = state["cpu_seconds"], time.process_time()


class EpochBatches:
    """Shuffled mini-batches of row-aligned tensors; batch ``step`` is a pure function of
    ``(seed, step)``, so resuming needs no saved state. Incomplete last batches are dropped."""

    def __init__(self, tensors: Sequence[torch.Tensor], batch_size: int, seed: int = 0):
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError(f"tensors differ in rows: {[t.shape[0] for t in tensors]}")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size must be in 1..{n}; got {batch_size}")
        self.tensors, self.batch_size, self.seed = tuple(tensors), batch_size, seed
        self.per_epoch = n // batch_size
        self._epoch, self._order = -1, None

    def order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            digest = hashlib.sha256(f"epoch-batches/{self.seed}/{epoch}".encode()).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            self._epoch = epoch
            self._order = torch.randperm(self.tensors[0].shape[0], generator=generator)
        return self._order

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        epoch, i = divmod(step, self.per_epoch)
        rows = self.order(epoch)[i * self.batch_size : (i + 1) * self.batch_size]
        return tuple(t[rows] for t in self.tensors)


class GeneratedBatches:
    """Fresh samples every step from ``sample(batch_size, generator)``; the generator is saved."""

    def __init__(self, sample: Callable[[int, torch.Generator], Any], batch_size: int, seed: int):
        self.sample, self.batch_size = sample, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, step: int) -> Any:
        return self.sample(self.batch_size, self.generator)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


# ---------------------------------------------------------------- stages


def policy_hazards(policy: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` hazard logits of ``policy`` on per-step ``features (B, T, F)``."""
    return torch.stack([policy(features[:, t], t) for t in range(features.shape[1])], dim=1)


def optimize(
    stage: str,
    num_steps: int,
    loss_and_metrics: Callable[[int], tuple[torch.Tensor, dict[str, float]]],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    settings: LoopSettings | None,
    scheduler: Any = None,
    grad_clip: float | None = None,
) -> dict[str, float]:
    """A gradient-descent stage: ``loss_and_metrics(step) -> (loss, metrics)``, then zero grads,
    backward, average over ranks, clip (``grad_clip``: max global norm), step the optimizer and
    the scheduler. Resumable through :func:`train_loop`; ``state`` names the other objects to
    checkpoint (model, batch source, ...); the optimizer and scheduler are added here. A
    gradient that is not finite (a finite loss can have one) raises :class:`Diverged` before
    the optimizer applies it, so no checkpoint holds its result."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]

    def step_fn(step: int) -> dict[str, float]:
        loss, metrics = loss_and_metrics(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(parameters)
        grads = [p.grad for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if not bool(torch.isfinite(norm)):
            raise diverged(
                f"gradient norm {float(norm)} (loss {float(loss.detach())})", step, stage, settings
            )
        if grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(parameters, grad_clip, norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return {"loss": loss.detach(), **metrics}

    state = {**state, "optimizer": optimizer, "scheduler": scheduler}
    return train_loop(stage, num_steps, step_fn, state, settings)


def _fit_model(
    model: StepModel,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    objective: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    settings: LoopSettings | None,
    stage: str,
    **optimize_kw,
) -> dict[str, float]:
    """Train a step model on ``objective(per-step losses (B, T))``."""

    def loss(step):
        inputs, targets = shard(batches(step))
        losses = loss_fn(unroll(model, inputs).predictions, targets)
        return objective(losses), {"last": losses[:, -1].mean().detach()}

    model.train()
    state = {"model": model, "batches": batches}
    return optimize(stage, num_steps, loss, optimizer, state, settings, **optimize_kw)


def fit_predictor(
    model: StepModel,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    step_weights: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "predictor",
    **optimize_kw,
) -> dict[str, float]:
    """Train a step model on fixed per-step weights: Σ_t w_t mean_b ℓ_t (default: the mean over
    steps, i.e. deep supervision; ``one_hot(T-1)`` trains the last step only)."""

    def weighted(losses):
        per_step = losses.mean(0)
        w = (
            torch.full_like(per_step, 1 / len(per_step))
            if step_weights is None
            else torch.as_tensor(step_weights)
        )
        return (per_step * w.to(per_step)).sum()

    return _fit_model(
        model, batches, loss_fn, weighted, optimizer, num_steps, settings, stage, **optimize_kw
    )


def fit_oracle(
    model: StepModel,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    beta: float,
    mask: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "stage1",
    uniform: float = 0.0,
    detach_oracle: bool = True,
    **optimize_kw,
) -> dict[str, float]:
    """L2S stage I: train the step model under the oracle q* = softmax(−ℓ/β) (weights detached,
    or not: ``detach_oracle=False``, the official DnCNN-stop code's form); ``uniform`` mixes in
    deep supervision's uniform weights (:func:`~.objectives.l2s_stage1_loss`)."""

    def under_oracle(losses):
        return l2s_stage1_loss(losses, beta, mask, uniform, detach=detach_oracle)

    return _fit_model(
        model, batches, loss_fn, under_oracle, optimizer, num_steps, settings, stage, **optimize_kw
    )


def fit_policy(
    model: StepModel,
    policy: nn.Module,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    beta: float,
    hard: bool = False,
    mask: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "stage2",
    step_penalty: torch.Tensor | None = None,
    **optimize_kw,
) -> dict[str, float]:
    """L2S stage II: the step model is frozen; the policy imitates the (soft or hard) oracle.

    ``step_penalty`` ``(T,)``, if given, is added to every row's per-step losses before the
    oracle: with λ·c_t (c_t the cumulative cost of stopping at t) the policy imitates the
    cost-aware oracle q*(t) ∝ exp(−(ℓ_t + λ c_t)/β), whose hard form is argmin_t ℓ_t + λ c_t —
    the depth a per-sample budget would choose — instead of the cost-blind argmin_t ℓ_t.
    """

    def imitate(scores, losses):
        if step_penalty is not None:
            losses = losses + torch.as_tensor(step_penalty).to(losses)
        stop = StopTime(scores, mask)
        return l2s_stage2_loss(stop, losses, beta, hard), {
            "mean_steps": stop.mean().mean().detach()
        }

    return _fit_head(model, policy, batches, loss_fn, imitate, optimizer, num_steps, settings,
                     stage, **optimize_kw)  # fmt: skip


def fit_gain_policy(
    model: StepModel,
    policy: nn.Module,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    costs: torch.Tensor | None = None,
    price: float = 1.0,
    floor: float = 1e-6,
    mask: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "stage2-gain",
    **optimize_kw,
) -> dict[str, float]:
    """Stage II for budgets (an alternative to :func:`fit_policy`): the step model is frozen and
    the policy's score at step t regresses on −log g_t, the best loss decrease per unit of cost
    that going on can still buy (:func:`stopwise.objectives.gain_loss`). Stopping at the first
    step whose score ≥ −log λ is then the cost-aware oracle argmin_t ℓ_t + λ c_t for every price
    λ at once, so one policy serves the whole budget curve. ``price``: the λ at which the score is
    zero (the score regresses on −log g_t + log price), so that a hazard rule (stop once
    σ(score) ≥ ½) stops where going on buys less than ``price`` per unit of cost. ``costs (T,)``:
    cumulative cost of stopping at each step (default 1, 2, …, T); ``mask (T,)``: the steps it
    may stop at; ``floor``: g_t below it counts as ``floor``."""

    regress = _gain_objective(costs, price, floor, mask)
    return _fit_head(model, policy, batches, loss_fn, regress, optimizer, num_steps, settings,
                     stage, **optimize_kw)  # fmt: skip


def fit_gain_head(
    policy: nn.Module,
    features: torch.Tensor,
    losses: torch.Tensor,
    batches: Callable[[int], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    costs: torch.Tensor | None = None,
    price: float = 1.0,
    floor: float = 1e-6,
    mask: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "stage2-gain",
    **optimize_kw,
) -> dict[str, float]:
    """:func:`fit_gain_policy` on trajectories already computed by the frozen model: per-step
    policy ``features (N, T, F)`` and ``losses (N, T)`` of N training rows; ``batches(step)``
    gives the row indices of each update (e.g. ``EpochBatches((rows,), B, seed)``'s first
    tensor). For models whose steps are too costly to rerun for every update."""
    regress = _gain_objective(costs, price, floor, mask)
    features, losses = features.detach(), losses.detach()

    def loss(step):
        rows = batches(step)
        return regress(policy_hazards(policy, features[rows]), losses[rows])

    policy.train()
    state = {"policy": policy, "batches": batches}
    return optimize(stage, num_steps, loss, optimizer, state, settings, **optimize_kw)


def _gain_objective(costs, price: float, floor: float, mask):
    """``(scores (B, T), losses (B, T)) -> (loss, metrics)`` of the gain-rate regression."""

    def regress(scores, losses):
        T = losses.shape[1]
        c = torch.arange(1, T + 1, dtype=losses.dtype) if costs is None else torch.as_tensor(costs)
        # A mask of 0/1 or a list, as fit_policy and run_adaptive take it (an int tensor failed
        # in masked_fill, a list had no .to).
        valid = torch.ones(T, dtype=torch.bool) if mask is None else torch.as_tensor(mask).bool()
        return gain_loss(scores - math.log(price), losses, c.to(losses), valid, floor), {}

    return regress


def _fit_head(model, policy, batches, loss_fn, objective, optimizer, num_steps, settings, stage,
              **optimize_kw) -> dict[str, float]:  # fmt: skip
    """A stage II: the step model frozen, ``objective(scores (B, T), losses (B, T)) -> (loss,
    metrics)`` on the policy's per-step scores and the model's per-step losses of each batch."""

    def loss(step):
        inputs, targets = shard(batches(step))
        with torch.no_grad():
            trajectory = unroll(model, inputs, with_features=True)
            losses = loss_fn(trajectory.predictions, targets)
        return objective(policy_hazards(policy, trajectory.features), losses)

    model.eval()
    policy.train()
    state = {"policy": policy, "batches": batches}
    return optimize(stage, num_steps, loss, optimizer, state, settings, **optimize_kw)


def fit_joint(
    model: StepModel,
    policy: nn.Module,
    batches: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    num_steps: int,
    beta: float,
    mask: torch.Tensor | None = None,
    settings: LoopSettings | None = None,
    stage: str = "joint",
    **optimize_kw,
) -> dict[str, float]:
    """Train model and policy together on the β-VAE objective E_q ℓ − βH(q) (L2S, Eq. 6).

    The exact gradient of Eq. 6: the policy's features are not detached, so E_q ℓ and −βH(q)
    also reach the model through them (the official MAML-stop code detaches its features; to do
    the same, detach them in the step model's ``features``)."""

    def loss(step):
        inputs, targets = shard(batches(step))
        trajectory = unroll(model, inputs, with_features=True)
        losses = loss_fn(trajectory.predictions, targets)
        stop = StopTime(policy_hazards(policy, trajectory.features), mask)
        return joint_loss(stop, losses, beta), {"mean_steps": stop.mean().mean().detach()}

    model.train()
    policy.train()
    state = {"model": model, "policy": policy, "batches": batches}
    return optimize(stage, num_steps, loss, optimizer, state, settings, **optimize_kw)
