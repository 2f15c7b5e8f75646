"""Adaptive inference: run a step model with a stopping policy and a rule, per input.

Three execution modes give the same predictions and stop steps (up to floating-point rounding:
a matrix product's rounding can depend on which rows share a batch, and a score within that
rounding of its threshold can fall on either side; calibrated thresholds lie midway between
validation scores to leave a margin):

* ``dense``  — run every step on the whole batch, then select (simple; the reference);
* ``masked`` — a fixed trip count over the whole batch, each row keeping its prediction from
  the step it stops at (no data-dependent shapes, so it compiles and exports);
* ``shrink`` — finished rows leave the batch, so later steps run on fewer rows: real wall-clock
  savings on CPU and GPU.

A *rule* turns the hazard logit of each row at step t into stop / go. Threshold rules compare a
per-row *score* with a threshold; :func:`fit_threshold` and :func:`calibrate` choose that threshold
on validation data so the mean cost meets a budget, and :func:`fit_exit_thresholds` fits MSDNet's
per-exit thresholds for a target exit distribution.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .steps import (
    StepModel,
    StepStack,
    cat_state,
    index_state,
    state_batch_size,
    state_device,
    state_tensors,
)

__all__ = [
    "Rule",
    "ThresholdRule",
    "ScoreThreshold",
    "HazardThreshold",
    "CumulativeThreshold",
    "MixedRule",
    "SampleRule",
    "AdaptiveResult",
    "run_adaptive",
    "run_fixed",
    "hazard_trajectory",
    "stop_indices",
    "in_chunks",
    "time_adaptive",
    "fit_threshold",
    "rule_scores",
    "calibrate",
    "exit_distribution",
    "fit_exit_thresholds",
    "MODES",
]

MODES = ("dense", "masked", "shrink")


# ---------------------------------------------------------------- rules


class Rule:
    """Decides, step by step, which rows stop. Carries optional batch-first state per row: a
    tensor or a tuple of them (``None`` for nothing), split row-wise like a state."""

    def init_carry(self, batch: int, num_steps: int, device) -> Any:
        return None

    def decide(self, hazard_logits: torch.Tensor, t: int, carry: Any) -> tuple[torch.Tensor, Any]:
        """``hazard_logits (b,)`` at step ``t`` → ``(stop (b,) bool, new carry)``."""
        raise NotImplementedError

    def needs_policy(self, t: int) -> bool:
        """Whether step ``t`` needs the policy's hazard: False only where the rule can stop no
        row and carries nothing, so adaptive inference skips the features and the policy."""
        return True

    def stops_all(self, t: int) -> bool:
        """Whether every row that reaches step ``t`` stops there, whatever the policy says (a
        threshold of −∞): adaptive inference then asks no policy at ``t``."""
        return False

    def check_steps(self, num_steps: int) -> None:
        """ValueError if the rule cannot run a model of ``num_steps`` steps."""


class ThresholdRule(Rule):
    """Stop when a per-row score reaches ``score_threshold`` (a scalar or one per step)."""

    def __init__(self, score_threshold: float | Sequence[float] | torch.Tensor):
        self.score_threshold = torch.as_tensor(score_threshold, dtype=torch.float64)
        if bool(self.score_threshold.isnan().any()):  # no score reaches NaN: a silent "never"
            raise ValueError(f"a threshold must not be NaN; got {score_threshold}")
        # Where no score reaches the threshold, and where every score does (NaN too), as Python
        # bools (read while exporting).
        self._unreachable = (self.score_threshold == math.inf).tolist()
        self._certain = (self.score_threshold == -math.inf).tolist()
        # Python floats made here, not while a program is traced for export (see _cutoffs_in).
        self._cutoffs = {dtype: _cutoffs_in(self.score_threshold, dtype) for dtype in _FLOATS}

    def score(
        self, hazard_logits: torch.Tensor, t: int, carry: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def threshold_at(self, t: int) -> torch.Tensor:
        thr = self.score_threshold
        return thr if thr.dim() == 0 else thr[t]

    def check_steps(self, num_steps: int) -> None:
        shape = tuple(self.score_threshold.shape)
        if shape not in ((), (num_steps,)):
            raise ValueError(
                f"{type(self).__name__}'s threshold has shape {shape}; a model of {num_steps} "
                f"steps needs a scalar or one per step, ({num_steps},)"
            )

    def decide(self, hazard_logits, t, carry):
        score, carry = self.score(hazard_logits, t, carry)
        return self.reaches(score, t), carry

    def stops_all(self, t: int) -> bool:
        return _at_step(self._certain, t)

    def reaches(self, score: torch.Tensor, t: int) -> torch.Tensor:
        """``score ≥`` the threshold of step ``t``, exactly as compared in float64 (as
        :func:`_reaches`), with one compare against the cutoff made for the scores' dtype."""
        if self.stops_all(t):  # −∞: every score, a NaN too
            return torch.ones_like(score, dtype=torch.bool)
        cutoffs = self._cutoffs.get(score.dtype)
        if cutoffs is None:  # not a float dtype, or a subnormal cutoff (see _cutoffs_in)
            return _reaches(score, self.threshold_at(t))
        if _at_step(self._unreachable, t):  # not even a score of +∞
            return torch.zeros_like(score, dtype=torch.bool)
        return score >= _at_step(cutoffs, t)


def _at_step(value: Any, t: int) -> Any:
    """Step ``t``'s entry of what a threshold's ``tolist()`` gave: a list (one per step), or a
    Python scalar (the same at every step)."""
    return value[t] if isinstance(value, list) else value


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cutoffs_in(threshold: torch.Tensor, dtype: torch.dtype) -> float | list[float] | None:
    """For each threshold θ (float64), the least value c of ``dtype`` with c ≥ θ, as a Python
    float (exact in ``dtype``, so comparing with it casts nothing): a score s of ``dtype`` has
    s ≥ θ exactly when s ≥ c. One compare per decision instead of widening every score
    (:func:`_reaches`). A θ beyond the dtype's range gives ±∞; θ = +∞ (never reached) gives +∞
    too, so the caller checks it apart. None where a cutoff may be subnormal in ``dtype`` (0 <
    |θ| < the least normal value): with ``torch.set_flush_denormal(True)`` the compare would read
    it as 0, so such a rule widens (judged on θ: a flushing CPU also reads a subnormal c as 0)."""
    magnitude = threshold.abs()
    if bool(((magnitude > 0) & (magnitude < torch.finfo(dtype).tiny)).any()):
        return None
    rounded = threshold.to(dtype)
    below = rounded.double() < threshold
    rounded = torch.where(below, torch.nextafter(rounded, rounded.new_tensor(math.inf)), rounded)
    return rounded.tolist()


def _reaches(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``scores ≥ threshold``, exactly: compared in the wider of the two dtypes (every mode
    compares them here). A float64 threshold cast to float32 rounds to nearest, and a score just
    below it passed: σ(s) = 0.6999999972 reached HazardThreshold(0.7). A threshold of +∞ is never
    reached, not even by a score of +∞ (it means "no stop here"); one of −∞ is reached by every
    score, NaN too ("stop here", which adaptive inference decides without the policy)."""
    dtype = torch.promote_types(scores.dtype, threshold.dtype)
    threshold = threshold.to(dtype).to(scores.device)
    reached = (scores.to(dtype) >= threshold) & (threshold < math.inf)
    return reached | (threshold == -math.inf)


class ScoreThreshold(ThresholdRule):
    """Stop at the first step whose policy output (the hazard logit, or any confidence-like
    score a policy returns) is ≥ ``threshold`` (a scalar or ``(T,)``, one per step: MSDNet's
    per-exit thresholds)."""

    def score(self, hazard_logits, t, carry):
        return hazard_logits, carry

    def needs_policy(self, t: int) -> bool:
        return not _at_step(self._unreachable, t)

    def __repr__(self):
        return f"{type(self).__name__}(score={self.score_threshold.tolist()})"


class HazardThreshold(ScoreThreshold):
    """Stop at the first step whose hazard λ_t ≥ ``threshold`` (a probability, scalar or
    ``(T,)``). Compared on logits, h ≥ logit(threshold), so no σ(h) is rounded (σ saturates in
    float32 for |h| > 17); logit(threshold) itself is rounded to float64, so a logit within one
    float64 step of it may decide either way. A threshold of 1
    is +∞ on the logit scale, which no score reaches: it never stops (+∞ is how rules say "no
    stop at this step")."""

    def __init__(self, threshold: float | torch.Tensor):
        thr = torch.as_tensor(threshold, dtype=torch.float64)
        if not bool(((thr >= 0) & (thr <= 1)).all()):  # NaN fails too
            raise ValueError(f"hazard threshold must lie in [0, 1]; got {threshold}")
        super().__init__(torch.logit(thr))


class CumulativeThreshold(ThresholdRule):
    """Stop at the first step where P(stopped by t) = 1 − ∏_{τ≤t}(1 − λ_τ) ≥ ``threshold`` (a
    scalar or ``(T,)``, one per step)."""

    def __init__(self, threshold: float | torch.Tensor):
        thr = torch.as_tensor(threshold, dtype=torch.float64)
        if not bool((((thr >= 0) & (thr <= 1)) | thr.isinf()).all()):
            raise ValueError(
                f"cumulative threshold must lie in [0, 1] (or be inf: never stop early, −inf: "
                f"always stop); got {threshold}"
            )
        super().__init__(thr)

    def init_carry(self, batch, num_steps, device):
        return torch.zeros(batch, device=device)  # log survival so far

    def score(self, hazard_logits, t, carry):
        carry = carry + F.logsigmoid(-hazard_logits)
        return -torch.expm1(carry), carry

    def __repr__(self):
        return f"CumulativeThreshold({self.score_threshold.tolist()})"


# 1/φ: the multiples (i + 1)/φ mod 1 spread over [0, 1) as evenly as any sequence can, so every
# batch, and every contiguous part of one, gets a MixedRule's share of rows to within ~log(B)/B.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class MixedRule(Rule):
    """Two threshold rules of one kind shared out over the rows: the rows at batch positions i
    with frac((i + 1)/φ) < ``share`` follow ``first``, the others ``second``.

    A budget between the mean costs of two rules is met by running each on its share of the
    rows (a mix of two fixed depths is the simplest case): calibration
    (:func:`stopwise.selection.fit_floored_threshold`) uses it where the mix is better on
    validation than any single rule within the budget. The split depends on a row's position
    in the batch it is run in, not on its content, and needs no random numbers, so every mode
    and an exported program see the same split.
    """

    def __init__(self, first: ThresholdRule, second: ThresholdRule, share: float):
        if not (isinstance(first, ThresholdRule) and isinstance(second, ThresholdRule)):
            raise ValueError(f"a MixedRule mixes two threshold rules; got {first!r} and {second!r}")
        if type(first).score is not type(second).score:  # one score recurrence for both
            raise ValueError(
                f"a MixedRule mixes rules of one kind of score; got {type(first).__name__} and "
                f"{type(second).__name__}"
            )
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must lie in [0, 1]; got {share}")
        self.first, self.second, self.share = first, second, float(share)

    def follows_first(self, batch: int, device=None) -> torch.Tensor:
        """``(batch,)`` bool: the rows that follow ``first``."""
        positions = torch.arange(1, batch + 1, dtype=torch.float64, device=device)
        return torch.frac(positions * _GOLDEN) < self.share

    def init_carry(self, batch, num_steps, device):
        return self.follows_first(batch, device), self.first.init_carry(batch, num_steps, device)

    def decide(self, hazard_logits, t, carry):
        first, inner = carry
        # The kinds' scores depend on the hazards only: one recurrence serves both rules.
        score, inner = self.first.score(hazard_logits, t, inner)
        first = first.to(score.device)
        # Logical ops, not a Where on bools (which onnxruntime lacks).
        stop = (first & self.first.reaches(score, t)) | (~first & self.second.reaches(score, t))
        return stop, (first, inner)

    def needs_policy(self, t: int) -> bool:
        return self.first.needs_policy(t) or self.second.needs_policy(t)

    def stops_all(self, t: int) -> bool:
        return self.first.stops_all(t) and self.second.stops_all(t)

    def check_steps(self, num_steps: int) -> None:
        self.first.check_steps(num_steps)
        self.second.check_steps(num_steps)

    def __repr__(self):
        return f"MixedRule({self.first!r}, {self.second!r}, share={self.share:.6g})"


class SampleRule(Rule):
    """Stop at step t with probability λ_t (the paper's sampled inference), reproducibly.

    The uniforms of all rows and steps are drawn up front from ``seed``, so every mode (and any
    batch order of execution) sees the same draws.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def init_carry(self, batch, num_steps, device):
        generator = torch.Generator().manual_seed(self.seed)
        return torch.rand(batch, num_steps, generator=generator).to(device)

    def decide(self, hazard_logits, t, carry):
        return torch.log(carry[:, t]) < F.logsigmoid(hazard_logits), carry

    def __repr__(self):
        return f"SampleRule(seed={self.seed})"


# ---------------------------------------------------------------- execution


@dataclass
class AdaptiveResult:
    """Output of :func:`run_adaptive`.

    predictions: ``(B, ...)`` the prediction at each row's stop step.
    stop_index: ``(B,)`` 0-based stop step (long).
    cost: ``(B,)`` cumulative cost of the steps each row ran (from ``step_costs``).
    """

    predictions: torch.Tensor
    stop_index: torch.Tensor
    cost: torch.Tensor

    @property
    def steps_used(self) -> torch.Tensor:
        """``(B,)`` 1-based number of steps used."""
        return self.stop_index + 1


def _step_mask(valid_steps, T: int) -> torch.Tensor:
    """``(T,)`` bool on the CPU from a mask given as a tensor or a sequence (None: every step)."""
    if valid_steps is None:
        return torch.ones(T, dtype=torch.bool)
    valid = torch.as_tensor(valid_steps).bool().cpu()
    if valid.shape != (T,):
        raise ValueError(f"valid_steps must have shape ({T},); got {tuple(valid.shape)}")
    if not bool(valid.any()):
        raise ValueError("valid_steps has no valid step")
    return valid


def run_adaptive(
    model: StepModel,
    policy,
    inputs: Any,
    rule: Rule,
    mode: str = "shrink",
    valid_steps: torch.Tensor | None = None,
    step_costs: torch.Tensor | None = None,
    chunk: int | None = None,
) -> AdaptiveResult:
    """Run ``model`` on ``inputs``, stopping each row where ``rule`` says, in the given ``mode``.

    Args:
        model: a :class:`~stopwise.steps.StepModel`.
        policy: ``policy(features (b, F), t) -> (b,)`` hazard logits.
        rule: a :class:`Rule`, e.g. ``HazardThreshold(0.5)``.
        mode: ``"dense"``, ``"masked"`` or ``"shrink"``.
        valid_steps: optional ``(T,)`` bool mask of steps allowed to stop (pruned exits are False);
            the last valid step stops every remaining row, and later steps never run.
        step_costs: ``(T,)`` cumulative cost per step; default ``model.step_costs()``. For a
            floored rule whose steps before the floor skip the policy (and features, exit
            heads), pass ``selection.floored_costs(...)``: the costs its budget was fitted with.
        chunk: rows that enter at a time (default: all). In ``shrink`` mode the rows that go on
            from several chunks are pooled, so a later step runs on about ``chunk`` rows, not
            on each chunk's few survivors; the other modes run chunk by chunk. Chunks change
            no decision: the rule's per-row carry (a :class:`MixedRule`'s split, a
            :class:`SampleRule`'s draws) is made once for all the rows and cut like them.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    chunk = None if chunk is None else _rows_per_chunk(chunk)
    rule.check_steps(model.max_steps)
    valid = _step_mask(valid_steps, model.max_steps)
    costs = model.step_costs() if step_costs is None else torch.as_tensor(step_costs)
    if costs.shape != (model.max_steps,):
        raise ValueError(
            f"step_costs must have shape ({model.max_steps},), one cumulative cost per step; "
            f"got {tuple(costs.shape)}"
        )
    if (mode == "shrink" or chunk is not None) and _no_rows(inputs):
        mode, chunk = "masked", None  # nothing to pool or cut: one pass gives the empty result
    if mode == "shrink":
        predictions, stop_index = _run_shrink(model, policy, inputs, rule, valid, chunk)
    else:
        run = {"dense": _run_dense, "masked": _run_masked}[mode]
        outputs = [
            run(model, policy, part, rule, valid, carry)
            for part, carry in zip(
                row_chunks(inputs, chunk), _chunk_carries(rule, inputs, model, chunk), strict=True
            )
        ]
        predictions, stop_index = (
            outputs[0] if len(outputs) == 1 else (torch.cat(c) for c in zip(*outputs, strict=True))
        )
    cost = costs.to(stop_index.device)[stop_index]
    return AdaptiveResult(predictions, stop_index, cost)


def _rows_per_chunk(chunk) -> int:
    """``chunk`` as a whole number ≥ 1, or ValueError."""
    try:
        rows = None if isinstance(chunk, bool) else operator.index(chunk)
    except TypeError:
        rows = None
    if rows is None:
        raise ValueError(f"chunk must be a whole number of rows; got {chunk!r}")
    if rows < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    return rows


def _no_rows(inputs: Any) -> bool:
    """Whether ``inputs`` is a batch of 0 rows (False for inputs that are not a state)."""
    try:
        return state_batch_size(inputs) == 0
    except (ValueError, TypeError, AttributeError, IndexError):
        return False


def row_chunks(inputs: Any, chunk: int | None):
    """``inputs`` (a tensor or a nested state) ``chunk`` rows at a time; all at once if None."""
    if chunk is None:
        yield inputs
        return
    for i in range(0, state_batch_size(inputs), chunk):
        yield index_state(inputs, slice(i, i + chunk))


def _chunk_carries(rule: Rule, inputs: Any, model: StepModel, chunk: int | None):
    """The rule's carry for each chunk of ``inputs`` (:func:`row_chunks`): made once for every
    row and cut like the inputs, so a row's carry depends on its position in ``inputs``, not in
    its chunk. One ``None`` (the run makes its own) without chunks."""
    if chunk is None:
        yield None
        return
    total = state_batch_size(inputs)
    carry = rule.init_carry(total, model.max_steps, state_device(inputs))
    for i in range(0, total, chunk):
        yield None if carry is None else index_state(carry, slice(i, i + chunk))


def _flags(valid) -> list[bool]:
    """A ``(T,)`` bool tensor or a sequence of bools, as a list of Python bools."""
    return valid.tolist() if isinstance(valid, torch.Tensor) else list(valid)


def _last(valid) -> int:
    """The last valid step of a ``(T,)`` bool tensor or a sequence of bools."""
    return max(t for t, ok in enumerate(_flags(valid)) if ok)


def _last_reached(rule: Rule, valid) -> int:
    """The last step any row reaches: the first valid one where ``rule`` stops every row (a
    threshold of −∞; no policy is asked there, and no later step runs), else the last valid."""
    flags = _flags(valid)
    last = _last(flags)
    return next((t for t in range(last) if flags[t] and rule.stops_all(t)), last)


def _run_shrink(model, policy, inputs, rule, valid, chunk=None):
    """Finished rows leave the batch. The inputs enter ``chunk`` rows at a time (default: all
    at once) and the rows that go on from several chunks are pooled: step t runs once
    ``chunk`` rows wait for it, so its fixed cost is paid once per pool rather than once for
    each chunk's few survivors. A pool of step t holds at most (t + 1)·``chunk`` − t rows (a
    pool arriving from step t − 1 joins fewer than ``chunk`` waiting), and a new chunk enters
    only when no pool is full."""
    if chunk is None:  # one batch (the inputs need not support selecting rows)
        first = _rows_first(model.start(inputs))
        total = chunk = state_batch_size(first)
        device, parts, carries = state_device(first), iter([first]), iter([None])
    else:
        total, device = state_batch_size(inputs), state_device(inputs)
        parts = (_rows_first(model.start(part)) for part in row_chunks(inputs, chunk))
        carries = _chunk_carries(rule, inputs, model, chunk)
    valid = _flags(valid)
    last = _last_reached(rule, valid)
    waiting: list[list[tuple]] = [[] for _ in range(last + 1)]  # (rows, state, carry) per step
    counts = [0] * (last + 1)
    predictions = None
    stop_index = torch.full((total,), -1, dtype=torch.long, device=device)
    fed, step = 0, None
    while True:
        if step is None:
            step = _next_pool(counts, chunk, inputs_left=fed < total)
        if step is None:  # a chunk enters
            state = next(parts)
            size = state_batch_size(state)
            rows = torch.arange(fed, fed + size, device=device)
            carry = next(carries)
            if carry is None:
                carry = rule.init_carry(size, model.max_steps, device)
            waiting[0].append((rows, state, carry))
            counts[0], fed = counts[0] + size, fed + size
            continue
        if step < 0:
            return predictions, stop_index
        t, step = step, None
        rows, state, carry = _pooled(waiting[t])
        waiting[t], counts[t] = [], 0
        state = model.advance(state, t)
        if valid[t] and (t == last or rule.needs_policy(t)):
            if t == last:  # every row left stops: no features, no decision
                prediction, stop, stopping = model.predict(state, t), None, rows.shape[0]
            else:
                prediction, features = model.observe(state, t)
                stop, carry = rule.decide(ask_policy(policy, features, t, rows.shape[0]), t, carry)
                stopping = int(stop.sum())
            _check_prediction(prediction, predictions, t)
            # Every row, in input order (one batch, and no row has stopped yet).
            whole = predictions is None and chunk >= total and rows.shape[0] == total
            if stopping == rows.shape[0]:  # the whole pool stops: nothing to select
                if whole:
                    return prediction, stop_index.fill_(t)
                if predictions is None:  # every row is written at its stop
                    predictions = prediction.new_empty((total, *prediction.shape[1:]))
                predictions.index_copy_(0, rows, prediction)
                stop_index.index_fill_(0, rows, t)
                continue
            if stopping:
                # One nonzero each way; every tensor is then gathered with index_select.
                stopped, go = stop.nonzero().squeeze(1), (~stop).nonzero().squeeze(1)
                finished = rows.index_select(0, stopped)
                if whole and 2 * stopping >= total:
                    # Most rows stop here: one plain copy of the batch beats two gathers (the
                    # rows that go on are overwritten at their own stop).
                    predictions = prediction.clone()
                else:
                    if predictions is None:
                        predictions = prediction.new_empty((total, *prediction.shape[1:]))
                    predictions.index_copy_(0, finished, prediction.index_select(0, stopped))
                stop_index.index_fill_(0, finished, t)
                rows, state, carry = (
                    rows.index_select(0, go),
                    index_state(state, go),
                    index_state(carry, go),
                )
        waiting[t + 1].append((rows, state, carry))
        counts[t + 1] += rows.shape[0]
        if counts[t + 1] >= chunk:  # no deeper pool is full: this one runs next
            step = t + 1


def _rows_first(state: Any) -> Any:
    """``state``, checked to have its rows first in every tensor: ``shrink`` selects rows of
    each (a shared constant in the state failed deep inside ``index_select``)."""
    tensors = state_tensors(state)
    if not tensors:
        raise ValueError("state holds no tensor")
    # Counted from the first tensor, which the message says: a shared matrix first made the
    # rows' own tensors look wrong, and a 0-d first tensor failed with an IndexError.
    rows = tensors[0].shape[0] if tensors[0].dim() else None
    wrong = [tuple(x.shape) for x in tensors if x.dim() == 0 or x.shape[0] != rows]
    if wrong:
        raise ValueError(
            "shrink mode selects the rows of every tensor of the state, counting them from its "
            f"first tensor (shape {tuple(tensors[0].shape)}); its tensors of shapes {wrong} have "
            "no such rows: keep what all rows share on the model (or run mode='masked')"
        )
    return state


def _next_pool(counts: list[int], chunk: int, inputs_left: bool) -> int | None:
    """The step whose waiting rows run next: the deepest pool of ``chunk`` rows or more (it
    finishes rows and frees memory soonest); else None while inputs are left (a chunk enters);
    else the shallowest pool left, whatever its size; −1 once nothing waits."""
    for t in range(len(counts) - 1, -1, -1):
        if counts[t] >= chunk:
            return t
    if inputs_left:
        return None
    return next((t for t, count in enumerate(counts) if count), -1)


def _pooled(pieces: list[tuple]) -> tuple:
    """One ``(rows, state, carry)`` from the pieces waiting for a step, concatenated."""
    if len(pieces) == 1:
        return pieces[0]
    return tuple(cat_state(list(column)) for column in zip(*pieces, strict=True))


def _run_masked(model, policy, inputs, rule, valid, carry=None):
    # Python bools, not a tensor: the trip count and the skipped steps are constants of the
    # program (what lets torch.export capture this loop).
    valid = _flags(valid)
    state = model.start(inputs)
    predictions = None
    last = _last_reached(rule, valid)
    # Every row runs every step; a finished row's prediction and stop step are kept when it
    # stops and nothing later reads its state or carry, so neither is frozen (which would need
    # the state's shapes to stay the same from step to step, and a Where on bool carries that
    # onnxruntime lacks).
    for t in range(last + 1):
        state = model.advance(state, t)
        if not valid[t] or (t < last and not rule.needs_policy(t)):
            continue
        prediction, features = model.observe(state, t)
        _check_prediction(prediction, predictions, t)
        if predictions is None:
            # The rows are the prediction's: a state may hold what all rows share (a matrix) as
            # its first tensor, which masked mode allows (shrink refuses it).
            B, device = prediction.shape[0], prediction.device
            predictions = prediction.new_zeros((B, *prediction.shape[1:]))
            done = torch.zeros(B, dtype=torch.bool, device=device)
            stop_index = torch.full((B,), -1, dtype=torch.long, device=device)
            if carry is None:
                carry = rule.init_carry(B, model.max_steps, device)
        if t == last:
            stop = torch.ones(B, dtype=torch.bool, device=device)
        else:
            stop, carry = rule.decide(ask_policy(policy, features, t, B), t, carry)
        newly = stop & ~done
        predictions = torch.where(
            newly.view(-1, *([1] * (prediction.dim() - 1))), prediction, predictions
        )
        stop_index = torch.where(newly, t, stop_index)
        done = done | newly
    return predictions, stop_index


def _check_prediction(prediction: Any, kept: torch.Tensor | None, t: int) -> None:
    """Every step's prediction is a tensor of the same per-row shape (a different one would
    broadcast into the kept predictions, or fail deep in torch)."""
    if not isinstance(prediction, torch.Tensor):
        raise ValueError(f"step {t}'s prediction must be a tensor; got {type(prediction).__name__}")
    if kept is not None and prediction.shape[1:] != kept.shape[1:]:
        raise ValueError(
            f"every step's prediction must have the same shape per row; step {t}'s is "
            f"{tuple(prediction.shape[1:])}, an earlier step's {tuple(kept.shape[1:])}"
        )


def _run_dense(model, policy, inputs, rule, valid, carry=None):
    state = model.start(inputs)
    last = _last(valid)
    predictions, hazards = StepStack("prediction"), []
    for t in range(last + 1):
        state = model.advance(state, t)
        prediction, features = model.observe(state, t)
        predictions.append(prediction)
        B = prediction.shape[0]  # the prediction's rows (as in masked mode)
        hazards.append(ask_policy(policy, features, t, B) if valid[t] and t < last else None)
    stacked = predictions.stack()
    # Full-width hazards (zeros where no decision is taken) so rules see the same (B, T) layout
    # as in the other modes (a sampling rule draws its uniforms for all T steps).
    decided = [h for h in hazards if h is not None]
    dtype = decided[0].dtype if decided else torch.float32
    hazard = torch.zeros(B, model.max_steps, dtype=dtype, device=stacked.device)
    for t, h in enumerate(hazards):
        if h is not None:
            hazard[:, t] = h
    stop_index = stop_indices(hazard, rule, valid, carry)
    rows = torch.arange(B, device=stacked.device)
    return stacked[rows, stop_index], stop_index


def stop_indices(
    hazard_logits: torch.Tensor,
    rule: Rule,
    valid_steps: torch.Tensor | None = None,
    carry: Any = None,
) -> torch.Tensor:
    """``(B,)`` 0-based stop steps that ``rule`` picks from full hazards ``(B, T)``.

    The same step-by-step arithmetic as :func:`run_adaptive`, applied after the fact (for a
    :class:`ScoreThreshold`, whose decision needs no recurrence, in one vectorised pass).
    ``carry``: the rule's initial carry of these rows (default: ``rule.init_carry``).
    """
    B, T = hazard_logits.shape
    valid = _step_mask(valid_steps, T)
    last = _last(valid)
    if isinstance(rule, ScoreThreshold):
        return _first_reaching(hazard_logits, rule.score_threshold, valid, last)
    device = hazard_logits.device
    if carry is None:
        carry = rule.init_carry(B, T, device)
    stop_index = torch.full((B,), last, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(last):
        if not valid[t]:
            continue
        stop, carry = rule.decide(hazard_logits[:, t], t, carry)
        newly = stop & ~done
        stop_index = torch.where(newly, t, stop_index)
        done = done | newly
    return stop_index


def _first_reaching(
    scores: torch.Tensor, threshold: torch.Tensor, valid: torch.Tensor, last: int
) -> torch.Tensor:
    """``(B,)`` the first valid step before ``last`` whose score is ≥ ``threshold`` (a scalar
    or one per step, compared exactly, in the wider of the two dtypes, as :func:`_reaches`
    does), else ``last``."""
    hits = _reaches(scores, threshold)
    hits &= valid.to(scores.device)  # no valid step lies after ``last``
    hits[:, last] = True
    return hits.to(torch.uint8).argmax(1)  # argmax returns the first of equal maxima


def run_fixed(model: StepModel, inputs: Any, num_steps: int | None = None) -> torch.Tensor:
    """Run the first ``num_steps`` steps (default all) and return the prediction there."""
    T = model.max_steps if num_steps is None else num_steps
    if not 1 <= T <= model.max_steps:
        raise ValueError(f"num_steps must lie in 1..{model.max_steps}; got {num_steps}")
    state = model.start(inputs)
    for t in range(T):
        state = model.advance(state, t)
    return model.predict(state, T - 1)


def ask_policy(policy, features: Any, t: int, rows: int) -> torch.Tensor:
    """``policy(features, t)``, checked to be hazard logits ``(rows,)``; a 0-d logit (one for
    every row) is expanded to them. A ``(rows, 1)`` output would broadcast into wrong shapes."""
    hazard = policy(features, t)
    if (
        not isinstance(hazard, torch.Tensor)
        or hazard.dim() not in (0, 1)
        or (hazard.dim() == 1 and hazard.shape[0] != rows)
    ):
        got = tuple(hazard.shape) if isinstance(hazard, torch.Tensor) else type(hazard).__name__
        raise ValueError(
            f"the policy must return hazard logits of shape ({rows},) at step {t}; got {got}"
        )
    return hazard.expand(rows) if hazard.dim() == 0 else hazard


@torch.no_grad()
def hazard_trajectory(model: StepModel, policy, inputs: Any) -> torch.Tensor:
    """``(B, T)`` hazard logits of ``policy`` at every step of ``model`` on ``inputs``."""
    state = model.start(inputs)
    hazards = []
    for t in range(model.max_steps):
        state = model.advance(state, t)
        prediction, features = model.observe(state, t)
        _check_prediction(prediction, None, t)
        # The prediction's rows, as in run_adaptive (a state may hold a shared matrix first).
        hazards.append(ask_policy(policy, features, t, prediction.shape[0]))
    return torch.stack(hazards, dim=1)


# ---------------------------------------------------------------- calibration


def rule_scores(
    hazard_logits: torch.Tensor, rule: ThresholdRule, valid: torch.Tensor
) -> torch.Tensor:
    """``(B, T)`` the scores ``rule`` compares with its threshold, by its own recurrence.

    Invalid steps are skipped, as :func:`run_adaptive` skips them, and score −inf.
    """
    B, T = hazard_logits.shape
    carry = rule.init_carry(B, T, hazard_logits.device)
    scores = []
    for t in range(T):
        if valid[t]:
            score, carry = rule.score(hazard_logits[:, t], t, carry)
        else:
            score = torch.full_like(hazard_logits[:, t], -math.inf)
        scores.append(score)
    return torch.stack(scores, dim=1)


# Threshold kinds that calibration can fit: each rule is built from a threshold on its score.
THRESHOLD_KINDS: dict[str, type[ThresholdRule]] = {
    "hazard": ScoreThreshold,  # on the hazard logit
    "cumulative": CumulativeThreshold,  # on P(stopped by t)
}


def fit_threshold(
    hazard_logits: torch.Tensor,
    budget: float,
    step_costs: torch.Tensor | None = None,
    kind: str = "hazard",
    valid_steps: torch.Tensor | None = None,
) -> ThresholdRule:
    """The threshold rule spending the most compute whose mean cost on these rows is ≤ ``budget``
    (to a relative 1e-12: a mean of equal costs may round a few ulps above them).

    ``hazard_logits`` ``(N, T)`` come from a held-out validation split (never the test set);
    ``step_costs`` ``(T,)`` are cumulative (default: steps used, 1..T); ``kind`` is ``"hazard"``
    or ``"cumulative"``. Exact: the mean cost of every threshold comes from the rule's own
    scores (:func:`_least_unaffordable_score`), so the returned rule reproduces the fitted cost
    on these rows; its threshold lies midway between the two observed scores it separates, so
    rounding differences smaller than half that gap change no decision on them. Where every row
    must stop at its first valid step the threshold is −∞ (so new rows do too, whatever their
    score), and where every row can run to the end it is +∞. A NaN score reaches no threshold
    but −∞.
    """
    rule_cls = THRESHOLD_KINDS.get(kind)
    if rule_cls is None:
        raise ValueError(f"unknown threshold kind {kind!r}; choose 'hazard' or 'cumulative'")
    if hazard_logits.dim() != 2:
        raise ValueError(f"hazard_logits must have shape (N, T); got {tuple(hazard_logits.shape)}")
    N, T = hazard_logits.shape
    costs = (
        torch.arange(1, T + 1, dtype=torch.float64)
        if step_costs is None
        else torch.as_tensor(step_costs, dtype=torch.float64).cpu()
    )
    if costs.shape != (T,):
        raise ValueError(
            f"step_costs must have shape ({T},), one cumulative cost per step; "
            f"got {tuple(costs.shape)}"
        )
    valid = _step_mask(valid_steps, T)
    if N == 0 or math.isnan(budget):
        raise ValueError(f"fit_threshold needs rows and a budget; got {N} rows, budget {budget}")
    probe = rule_cls(0.0)
    scores = rule_scores(hazard_logits.detach().cpu(), probe, valid).to(torch.float64)
    steps = valid.nonzero().squeeze(1)
    if not bool(costs[steps].isfinite().all()):  # a NaN passes the order check below
        raise ValueError(f"step_costs must be finite at the valid steps; got {costs.tolist()}")
    if bool((costs[steps[1:]] < costs[steps[:-1]]).any()):
        raise ValueError(f"step_costs must be cumulative (non-decreasing); got {costs.tolist()}")
    first, full = float(costs[steps[0]]), float(costs[steps[-1]])
    # A mean of equal costs may round a few ulps above them: a budget equal to a cost reaches it.
    within = budget + 1e-12 * max(1.0, abs(budget)) if math.isfinite(budget) else budget
    if first > within:
        raise ValueError(
            f"budget {budget:.6g} is below the least achievable mean cost {first:.6g} "
            f"(every row stopping at its first valid step); full depth costs {full:.6g}"
        )
    if full <= within:  # every row can run to the end
        return rule_cls(math.inf)
    # A row goes on past valid step k < K exactly when none of its scores up to k reaches θ,
    # i.e. when their running maximum r_k is below θ (a NaN score reaches no finite θ: −∞).
    deciding = scores[:, steps[:-1]]
    running = torch.where(deciding.isnan(), -math.inf, deciding).cummax(dim=1).values
    reached = _least_unaffordable_score(running, costs[steps], within)
    if reached == math.inf:  # only the rows scoring +∞ must stop (a threshold of +∞ stops none)
        return rule_cls(torch.finfo(torch.float64).max)
    going_on = running[running < reached]  # (scores after a row's stop decide nothing)
    if going_on.numel() == 0:  # every row stops at its first valid step: new rows too, whatever
        return rule_cls(-math.inf)  # their score
    return rule_cls(_between(float(going_on.max()), reached))


def _least_unaffordable_score(running: torch.Tensor, costs: torch.Tensor, within: float) -> float:
    """The least running maximum r such that a threshold above r costs more than ``within`` on
    average over the rows, while ``ScoreThreshold(r)`` does not (``running`` ``(N, K)``: each
    row's running maximum score r_k over the valid steps but the last, with their cumulative
    ``costs`` ``(K + 1,)``; running every row to the end must cost more than ``within``).

    A row goes on past step k exactly when r_k is below θ. So the mean cost of θ is
    c_0 + Σ (c_{k+1} − c_k) / N over the pairs (row, k) with r_k < θ: sorting every r_k once
    gives the cost of every θ as a cumulative sum, the cost changing only at an r_k. One sort,
    in place of a search running the rule on every row per probe."""
    rows, steps = running.shape
    values, order = running.flatten().sort()  # entry i is row i // steps, step i % steps
    increments = costs[1:] - costs[:-1]
    spent = costs[0] + increments[order.remainder_(steps)].cumsum(0) / rows  # once θ passes each
    fitting = int(torch.searchsorted(spent, torch.tensor([within], dtype=spent.dtype), right=True))
    return float(values[fitting])  # full depth does not fit: an r_k is left


def _between(below: float, reached: float) -> float:
    """A threshold midway between the highest score that must not stop a row and the lowest
    that must: the same decisions on the fitted rows, with a margin for the rounding of the
    same scores computed again (a matrix product's rounding can depend on which rows share the
    batch, as in ``shrink`` mode or in chunks). ``reached`` itself where there is no room."""
    middle = below / 2 + reached / 2
    return middle if below < middle < reached else reached


@torch.no_grad()
def calibrate(
    model: StepModel,
    policy,
    val_inputs: Any,
    budget: float,
    kind: str = "hazard",
    valid_steps: torch.Tensor | None = None,
    step_costs: torch.Tensor | None = None,
) -> ThresholdRule:
    """Fit a threshold rule on a validation split so the mean cost per row meets ``budget``.

    ``budget`` is in the units of ``step_costs`` (default ``model.step_costs()``). See
    :func:`fit_threshold`.
    """
    hazards = hazard_trajectory(model, policy, val_inputs)
    costs = model.step_costs() if step_costs is None else step_costs
    return fit_threshold(hazards, budget, costs, kind, valid_steps)


def exit_distribution(p: float, num_exits: int) -> torch.Tensor:
    """MSDNet's target exit distribution q_k ∝ p^k, k = 1..K (``(K,)`` float64)."""
    if not (p > 0 and math.isfinite(p)):  # a NaN p gave a NaN distribution
        raise ValueError(f"p must be a finite number > 0; got {p}")
    exits = torch.arange(1, num_exits + 1)
    q = torch.tensor(p, dtype=torch.float64) ** exits
    total = q.sum()
    if not bool(total.isfinite()):  # p^k overflows (p > 1, many exits): inf / inf was NaN
        return torch.softmax(exits.double() * math.log(p), dim=0)
    return q / total


def fit_exit_thresholds(scores: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """MSDNet's per-exit thresholds for a target exit distribution ``q (K,)``.

    ``scores`` ``(N, K)``: a confidence-like score per sample and exit on the validation split
    (higher = more confident; any monotone transform of the confidence gives the same exits).
    Exit k takes the ⌊N q_k⌋ highest-scoring samples not taken by an earlier exit; its threshold
    is the score of the last one taken (+inf if it takes none: as in MSDNet's code, also where
    ties at an earlier threshold left fewer than ⌊N q_k⌋ rows); the last exit takes the rest
    (−inf). Apply with ``ScoreThreshold(thresholds)`` on the same scores.
    Vectorised over samples; the loop runs over exits only.
    """
    N, K = scores.shape
    if q.shape != (K,):
        raise ValueError(f"q must have shape ({K},); got {tuple(q.shape)}")
    thresholds = torch.full((K,), math.inf, dtype=torch.float64)
    thresholds[-1] = -math.inf
    taken = torch.zeros(N, dtype=torch.bool, device=scores.device)
    for k in range(K - 1):
        n_k = int(math.floor(N * float(q[k])))
        # A NaN score reaches no threshold (but −∞): it ranks lowest, not highest as in topk,
        # where it took one of the exit's rows without ever exiting there.
        remaining = scores[~taken, k].nan_to_num(nan=-math.inf, posinf=math.inf, neginf=-math.inf)
        if 0 < n_k <= remaining.numel():
            thresholds[k] = float(remaining.topk(n_k).values[-1])
        taken |= _reaches(scores[:, k], thresholds[k])  # as ScoreThreshold decides
    return thresholds


@torch.no_grad()
def in_chunks(fn: Callable[[Any], Any], inputs: Any, chunk: int = 1000) -> Any:
    """``fn`` applied to ``chunk`` rows of ``inputs`` at a time (a tensor or a nested state),
    outputs concatenated along dim 0 (a tensor, or a tuple/list/dict of tensors), without grad.

    The evaluation helper of every task: per-step errors, hazards and logits of whole splits.
    """
    parts = [fn(part) for part in row_chunks(inputs, _rows_per_chunk(chunk))]
    if not parts:  # no rows: fn's own output for them, its shapes and dtypes
        return fn(inputs)
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: torch.cat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple | list):
        return type(first)(torch.cat(column) for column in zip(*parts, strict=True))
    raise TypeError(f"in_chunks: fn must return tensors; got {type(first).__name__}")


def _synchronize(inputs) -> None:
    """Wait for the GPU work queued so far, so that a wall-clock reading covers it."""
    if isinstance(inputs, dict):
        leaves = list(inputs.values())
    else:
        leaves = list(inputs) if isinstance(inputs, tuple | list) else [inputs]
    if any(isinstance(x, torch.Tensor) and x.is_cuda for x in leaves):
        torch.cuda.synchronize()


@torch.no_grad()
def time_adaptive(
    model: StepModel,
    policy,
    inputs: Any,
    rules: dict[str, Rule],
    valid_steps: torch.Tensor | None = None,
    repeats: int = 5,
    chunk: int | None = None,
    warmup: int = 1,
    unpooled: bool = False,
) -> dict[str, Any]:
    """Wall-clock of real adaptive inference against the full-depth model, measured side by side.

    Each repeat times, in turn, :func:`run_fixed` (every step, no policy) on ``inputs`` in row
    chunks of ``chunk`` (default: one batch) and :func:`run_adaptive` in ``shrink`` mode with
    the same ``chunk`` for every rule, by the wall clock and by the process's CPU time (all its
    threads; steadier than the wall clock on a shared machine). With ``unpooled`` it also times
    each rule run chunk by chunk, the rows that go on never pooled across chunks
    (``unpooled_seconds``, ``unpooled_speedup``; each chunk run as a batch of its own, so a
    :class:`MixedRule` splits each chunk anew there). Returns medians over repeats:
    ``{"full_seconds", "full_cpu_seconds", "rules": {name: {"seconds", "cpu_seconds",
    "speedup", "cpu_speedup", "mean_steps", "mean_cost"}}, "repeats", "rows"}``.
    """
    import statistics
    import time

    parts = list(row_chunks(inputs, chunk))

    def full():
        for part in parts:
            run_fixed(model, part)

    results: dict[str, AdaptiveResult] = {}

    def pooled(name, rule):
        results[name] = run_adaptive(
            model, policy, inputs, rule, "shrink", valid_steps, None, chunk
        )

    def chunk_by_chunk(name, rule):
        for part in parts:
            run_adaptive(model, policy, part, rule, "shrink", valid_steps)

    variants = {"": pooled, "unpooled_": chunk_by_chunk} if unpooled else {"": pooled}
    for _ in range(warmup):
        full()
        for name, rule in rules.items():
            for run in variants.values():
                run(name, rule)
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    full_times: dict[str, list[float]] = {clock: [] for clock in clocks}
    times = {(v, name): {clock: [] for clock in clocks} for v in variants for name in rules}

    def timed(fn, into: dict[str, list[float]]) -> None:
        _synchronize(inputs)
        start = {clock: read() for clock, read in clocks.items()}
        fn()
        _synchronize(inputs)
        for clock, read in clocks.items():
            into[clock].append(read() - start[clock])

    for _ in range(repeats):
        timed(full, full_times)
        for name, rule in rules.items():
            for v, run in variants.items():
                timed(lambda run=run, name=name, rule=rule: run(name, rule), times[v, name])
    full_s = statistics.median(full_times["wall"])
    full_cpu = statistics.median(full_times["cpu"])
    out: dict[str, Any] = {
        "full_seconds": full_s,
        "full_cpu_seconds": full_cpu,
        "repeats": repeats,
        "rows": state_batch_size(inputs),
        "rules": {},
    }
    for name in rules:
        entry = out["rules"][name] = {}
        for v in variants:
            seconds = statistics.median(times[v, name]["wall"])
            entry[f"{v}seconds"] = seconds
            entry[f"{v}speedup"] = full_s / seconds
        cpu_seconds = statistics.median(times["", name]["cpu"])
        entry["cpu_seconds"] = cpu_seconds
        entry["cpu_speedup"] = full_cpu / cpu_seconds if cpu_seconds > 0 else None
        entry["mean_steps"] = float(results[name].steps_used.double().mean())
        entry["mean_cost"] = float(results[name].cost.double().mean())
    return out
