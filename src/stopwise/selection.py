"""Choices made on validation, and the one place test numbers come from.

Every helper that *chooses* something — which exits to keep, which threshold meets a budget,
which rule kind or setting is best — takes validation data only (its arguments are named
``val_*``). Test numbers are produced after all choices by applying them unchanged:
:func:`budget_sweep` applies validation-calibrated thresholds to test hazards, and a task's test
split is wrapped in :class:`Heldout`, which opens once per job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np
import torch

from .inference import (
    THRESHOLD_KINDS,
    MixedRule,
    Rule,
    ScoreThreshold,
    ThresholdRule,
    fit_threshold,
    rule_scores,
    stop_indices,
)
from .stoptime import oracle

__all__ = [
    "Heldout",
    "prune_exits",
    "budget_grid",
    "BudgetPoint",
    "curve_budgets",
    "Calibration",
    "calibrate_by_metric",
    "skipped_decision_costs",
    "floored_costs",
    "fit_floored_threshold",
    "floored_rules",
    "rule_record",
    "point_rule",
    "budget_sweep",
    "fixed_depth_curve",
]

T = TypeVar("T")


def _ranked(sign: float, value: float) -> float:
    """A validation value as ranked, lower first: ``sign · value``, and +∞ for NaN (a metric
    undefined there, e.g. a diverged estimate), which ranks no better than the worst number:
    NaN compares false both ways, so a NaN compared first was kept by ``min``."""
    return math.inf if math.isnan(value) else sign * value


def _costs_or_steps(costs: torch.Tensor | None, num_steps: int) -> torch.Tensor:
    """``(T,)`` cumulative step costs in float64; steps used, 1..T, where ``costs`` is None."""
    if costs is None:
        return torch.arange(1, num_steps + 1, dtype=torch.float64)
    return costs.double()


class Heldout(Generic[T]):
    """A test split that can be opened once: test numbers are computed once, after every
    choice has been made on validation."""

    def __init__(self, data: T, name: str = "test"):
        self._data, self.name, self.opened = data, name, False

    def open(self) -> T:
        if self.opened:
            raise RuntimeError(
                f"the {self.name} split was opened already: test numbers are computed once, "
                "after all selection on validation"
            )
        self.opened = True
        return self._data


def prune_exits(val_losses: torch.Tensor, beta: float, min_mass: float) -> torch.Tensor:
    """``(T,)`` bool mask of the exits kept: those whose mean oracle mass
    mean_i softmax_t(−ℓ_it/β) on validation losses ``(N, T)`` is at least ``min_mass``
    (L2S §5.1 prunes at 1e-3). If none reaches it, the exit of largest mass is kept."""
    mass = oracle(val_losses.double(), beta).mean(0)
    valid = mass >= min_mass
    if not bool(valid.any()):
        valid[int(mass.argmax())] = True
    return valid


def budget_grid(valid: torch.Tensor, points: int, costs: torch.Tensor | None = None) -> list[float]:
    """``points`` budgets evenly spaced from the cost of the first valid step to the last, both
    exactly (costs default to steps used, 1..T); the last step's cost alone for ``points`` < 2."""
    T = valid.shape[0]
    costs = _costs_or_steps(costs, T)
    kept = costs[valid.bool().cpu()]
    first, last = float(kept.min()), float(kept.max())
    if points < 2 or first == last:
        return [last]
    # The last exactly: first + (last − first) can round an ulp below it.
    return [first + (last - first) * i / (points - 1) for i in range(points - 1)] + [last]


@dataclass
class Calibration:
    """The rule :func:`calibrate_by_metric` chose, and every candidate's validation numbers."""

    rule: ThresholdRule
    kind: str
    budget: float
    value: float
    mean_cost: float
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def plain(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "score_threshold": self.rule.score_threshold.tolist(),
            "budget": self.budget,
            "validation_value": self.value,
            "validation_mean_cost": self.mean_cost,
            "candidates": self.candidates,
        }


def calibrate_by_metric(
    val_hazards: torch.Tensor,
    val_metric: Callable[[torch.Tensor], float],
    budgets: Sequence[float],
    kinds: Sequence[str] = ("hazard",),
    valid: torch.Tensor | None = None,
    costs: torch.Tensor | None = None,
    *,
    lower_is_better: bool,
) -> Calibration:
    """The threshold rule with the best validation metric among rules fitted to each budget and
    kind. ``val_metric(stop_index (N,)) -> float`` scores validation stop steps (e.g. NMSE of
    the estimates there); ties go to the cheaper rule, and a NaN value ranks worst."""
    if not budgets or not kinds:
        raise ValueError(
            f"calibrate_by_metric needs a budget and a kind to choose among; got budgets "
            f"{list(budgets)}, kinds {list(kinds)}"
        )
    T = val_hazards.shape[1]
    costs = _costs_or_steps(costs, T)
    candidates, best = [], None
    for kind in kinds:
        for budget in budgets:
            rule = fit_threshold(val_hazards, budget, costs, kind, valid)
            index = stop_indices(val_hazards, rule, valid)
            value, mean_cost = float(val_metric(index)), float(costs[index.cpu()].mean())
            candidates.append({"kind": kind, "budget": budget, "value": value, "cost": mean_cost})
            sign = 1.0 if lower_is_better else -1.0
            key = (_ranked(sign, value), mean_cost)
            if best is None or key < best[0]:
                best = (key, Calibration(rule, kind, budget, value, mean_cost))
    best[1].candidates = candidates
    return best[1]


def skipped_decision_costs(kind: str, decision_costs: torch.Tensor | None):
    """``decision_costs`` where a floored rule of ``kind`` skips the policy before its floor;
    None where it cannot: a cumulative rule asks the policy at every step (it sums the
    hazards from the first step on), so its floor saves nothing."""
    return decision_costs if issubclass(THRESHOLD_KINDS[kind], ScoreThreshold) else None


def floored_costs(
    costs: torch.Tensor, decision_costs: torch.Tensor | None, valid: torch.Tensor, floor: int
) -> torch.Tensor:
    """``(T,)`` cumulative cost of stopping at each step under a floor: ``costs`` less the
    decision costs of the valid steps before the floor, which a rule that cannot stop there
    does not spend (:meth:`stopwise.inference.Rule.needs_policy`). A skipped step's decision
    cost is never spent, so it may be anything (∞, NaN), as its step cost in
    :func:`~stopwise.inference.fit_threshold`."""
    if decision_costs is None or floor == 0:
        return costs
    # Selected, not multiplied by the mask: ∞ · 0 is NaN, and made every cost NaN.
    spent = torch.where(valid.bool().cpu(), decision_costs.double().cpu(), 0.0)
    before = spent[:floor].sum()
    return costs - before


# Thresholds per floor (quantiles of the scores after it) that budget mixes are built from.
MIX_GRID = 16


class _Candidate(NamedTuple):
    value: float  # the validation metric
    cost: float  # mean validation cost, decisions before the floor saved
    floor: int
    threshold: float  # on the kind's score, from the floor on


class _FlooredSearch:
    """:func:`fit_floored_threshold`'s search, with what every budget shares computed once."""

    def __init__(
        self, val_hazards, val_metric, costs, valid, lower_is_better, kind, decision_costs
    ):
        T = val_hazards.shape[1]
        self.costs = _costs_or_steps(costs, T).cpu()
        self.valid = torch.ones(T, dtype=torch.bool) if valid is None else valid.bool().cpu()
        self.rule_cls = THRESHOLD_KINDS[kind]
        # The kind's own score at every step (its recurrence over the valid steps), thresholded
        # from the floor on as plain scores; a calibration runs on the CPU.
        hazards = val_hazards.detach().cpu()
        self.score_dtype = hazards.dtype  # what a rule's threshold is compared in
        self.scores = rule_scores(hazards, self.rule_cls(0.0), self.valid).double()
        self.metric, self.sign = val_metric, 1.0 if lower_is_better else -1.0
        self.floors = self.valid.nonzero().flatten().tolist()
        decision_costs = skipped_decision_costs(kind, decision_costs)
        self.floor_costs = [
            floored_costs(self.costs, decision_costs, self.valid, f) for f in range(T)
        ]
        self._pool: list[_Candidate] | None = None

    def allowed(self, floor: int) -> torch.Tensor:
        return self.valid & (torch.arange(self.valid.shape[0]) >= floor)

    def candidate(self, floor: int, threshold: float, index: torch.Tensor) -> _Candidate:
        cost = float(self.floor_costs[floor][index.cpu()].mean())
        return _Candidate(float(self.metric(index)), cost, floor, threshold)

    def rule(self, floor: int, threshold: float) -> ThresholdRule:
        per_step = torch.full((self.valid.shape[0],), math.inf, dtype=torch.float64)
        per_step[floor:] = threshold
        return self.rule_cls(per_step)

    def key(self, c: _Candidate) -> tuple[float, float]:
        return _ranked(self.sign, c.value), c.cost  # better (NaN worst), then cheaper

    def singles(self, budget: float) -> list[_Candidate]:
        """Per floor: the threshold spending the most within ``budget``, and −∞ (fixed depth)."""
        out = []
        for floor in self.floors:
            allowed = self.allowed(floor)
            try:
                spending = fit_threshold(
                    self.scores, budget, self.floor_costs[floor], "hazard", allowed
                )
            except ValueError:  # stopping every row at the floor already costs more than the budget
                continue  # (not break: a later floor may cost less once decisions are saved)
            for threshold in (float(spending.score_threshold), -math.inf):
                index = stop_indices(self.scores, ScoreThreshold(threshold), allowed)
                out.append(self.candidate(floor, threshold, index))
        return out

    def grid(self) -> Iterator[tuple[int, float, torch.Tensor]]:
        """Per floor, ``MIX_GRID`` thresholds at quantiles of the scores after it (the lowest
        replaced by −∞: fixed depth at the floor), each with its ``(N,)`` stop steps."""
        levels = torch.linspace(0, 1, MIX_GRID, dtype=torch.float64)
        for floor in self.floors:
            allowed = self.allowed(floor)
            last = int(allowed.nonzero().max())
            # numpy's quantile: torch's refuses more than 2^24 values (large validation sets).
            # Between two infinite scores (a hazard of exactly 0 or 1) interpolation gives NaN:
            # the lower of the two is the quantile there.
            # A NaN score (a policy's NaN hazard) reaches no threshold but −∞, so it places none:
            # kept in, every quantile was NaN and so was every grid rule's threshold.
            scores, at = self.scores[:, allowed].flatten().numpy(), levels.numpy()
            scores = scores[~np.isnan(scores)]
            if scores.size == 0:  # every score NaN: fixed depth at the floor alone
                scores = np.array([-math.inf])
            with np.errstate(invalid="ignore"):
                between = np.quantile(scores, at)
            lower = np.quantile(scores, at, method="lower")
            thresholds = torch.from_numpy(np.where(np.isnan(between), lower, between))
            # Rounded as a rule rounds them (to the scores' dtype), so the stops searched here
            # are the stops the returned rule makes.
            thresholds = thresholds.to(self.score_dtype).double().unique()
            # The lowest stops every validation row at the floor; −∞ does so on any split (a
            # mix of fixed depths must stay one: the same fix as for single rules' ties).
            thresholds[0] = -math.inf
            hits = (self.scores[:, None, :] >= thresholds[None, :, None]) & allowed
            hits[..., last] = True
            first_hit = hits.to(torch.uint8).argmax(-1)  # (N, G): argmax takes the first
            for g, threshold in enumerate(thresholds.tolist()):
                yield floor, threshold, first_hit[:, g]

    def pool(self) -> list[_Candidate]:
        """The grid's rules with their validation numbers: what budget mixes pair up."""
        if self._pool is None:
            self._pool = [self.candidate(*rule) for rule in self.grid()]
        return self._pool

    def fit(self, budget: float, mixes: bool = True) -> tuple[Rule, int]:
        singles = self.singles(budget)
        if not singles:
            raise ValueError(f"budget {budget:.6g} is below the cost of the first valid step")
        # Exact ties go to fixed depth (−∞): its cost does not depend on the input, so it keeps
        # the budget on any split, where a threshold that ties with it on validation (both
        # stopping every row at the floor) lets a test row scoring below it run on to the end.
        best = min(singles, key=lambda c: (*self.key(c), c.threshold != -math.inf))
        if mixes:
            mixed = self.best_mix(budget, singles + self.pool(), best)
            if mixed is not None:
                return mixed
        return self.rule(best.floor, best.threshold), best.floor

    def best_mix(self, budget: float, candidates: list[_Candidate], single: _Candidate):
        """The best mix of a candidate costing at most ``budget`` with one costing more, shared
        out over the rows so the mean cost is the budget (a :class:`MixedRule`), if it is better
        on validation than ``single``. Both run from the earlier floor on (shrink asks the
        policy for every row from there), so each is costed with that floor's savings."""
        value = torch.tensor([c.value for c in candidates], dtype=torch.float64)
        cost = torch.tensor([c.cost for c in candidates], dtype=torch.float64)
        floor = torch.tensor([c.floor for c in candidates])
        saved = torch.stack([self.costs[0] - fc[0] for fc in self.floor_costs])  # (T,)
        early = torch.minimum(floor[:, None], floor[None, :])
        cheap = cost[:, None] + saved[floor][:, None] - saved[early]  # row: the cheaper rule
        dear = cost[None, :] + saved[floor][None, :] - saved[early]  # column: the dearer one
        fits = (cheap <= budget) & (dear > budget)
        if not bool(fits.any()):
            return None
        share = ((budget - cheap) / (dear - cheap)).where(fits, 0.0)  # of the dearer rule
        mixed = (1 - share) * value[:, None] + share * value[None, :]
        # A NaN value ranks worst (as _ranked): argmin would pick it.
        key = (self.sign * mixed).nan_to_num(math.inf).masked_fill(~fits, math.inf)
        pick = int(key.argmin())
        a, e = candidates[pick // len(candidates)], candidates[pick % len(candidates)]
        if float(key.flatten()[pick]) >= _ranked(self.sign, single.value):
            return None
        # The rows split by position: the realised cost can pass the budget by a row or two,
        # so the cheaper rule's share grows a row at a time until it fits.
        rows, start = self.scores.shape[0], min(a.floor, e.floor)
        first_share = 1.0 - float(share.flatten()[pick])
        first, second = self.rule(a.floor, a.threshold), self.rule(e.floor, e.threshold)
        # The same thresholds on the kind's precomputed scores.
        on_scores = ScoreThreshold(first.score_threshold), ScoreThreshold(second.score_threshold)
        for _ in range(rows + 1):
            index = stop_indices(self.scores, MixedRule(*on_scores, first_share), self.valid)
            spent = float(self.floor_costs[start][index].mean())
            if spent <= budget + 1e-12 * max(1.0, abs(budget)):
                break
            first_share = min(1.0, first_share + 1.0 / rows)
        else:
            return None
        if _ranked(self.sign, float(self.metric(index))) >= _ranked(self.sign, single.value):
            return None
        return MixedRule(first, second, first_share), start


def fit_floored_threshold(
    val_hazards: torch.Tensor,
    budget: float,
    val_metric: Callable[[torch.Tensor], float],
    costs: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    *,
    lower_is_better: bool,
    kind: str = "hazard",
    decision_costs: torch.Tensor | None = None,
    mixes: bool = True,
) -> tuple[Rule, int]:
    """The best rule on validation within ``budget`` among "no row stops before step f; from f
    on, stop at the first step whose score (the ``kind`` rule's) reaches a threshold", over every
    valid floor f, each with the threshold that spends the most within the budget (as
    :func:`fit_threshold`) and with −∞ (every row stops at f: fixed depth f); and, with
    ``mixes``, two such rules (any floor, thresholds at quantiles of the scores) shared out
    over the rows (:class:`~stopwise.inference.MixedRule`) to spend the budget exactly, where
    that is better on validation. The candidates spend up to the budget, not less: where more
    steps make the metric worse on validation, a rule fitted to a smaller budget can be better
    than this budget's (:func:`budget_sweep` keeps the cheaper budget's rule then).

    The floor at the first valid step with its spending threshold is the plain threshold rule;
    since every fixed depth within the budget is a candidate, the rule chosen is never worse on
    validation than fixed depth. Mixes are ranked by the straight line between their two rules'
    validation values, but a :class:`~stopwise.inference.MixedRule` splits the rows by position,
    so its realised validation value differs from that line by sampling noise (of order
    sd·√(s(1 − s)/N) for a share s of N rows; up to ~0.006 in accuracy-like units in an audit's
    random problems): the chosen rule can be that much below the best line between two fixed
    depths, the comparator of :func:`stopwise.curves.best_fixed_mix`. The stop model's score decides
    which rows go past the floor. ``val_metric(stop_index (N,)) -> float`` scores validation
    stop steps (ties go to the cheaper rule, then to fixed depth; a NaN value ranks worst). ``decision_costs (T,)``: the part of each step's
    cost spent only to decide there (features, policy, an exit head), which adaptive inference
    skips before a floor (:func:`floored_costs`). Returns the rule (per-step thresholds, +∞
    before the floor; or a mix of two) and the 0-based floor (a mix's earlier one).
    """
    search = _FlooredSearch(
        val_hazards, val_metric, costs, valid, lower_is_better, kind, decision_costs
    )
    return search.fit(budget, mixes)


def floored_rules(
    val_hazards: torch.Tensor, valid: torch.Tensor | None = None, kind: str = "hazard"
) -> list[ThresholdRule]:
    """A grid of floored threshold rules spanning every cost: per valid floor, ``MIX_GRID``
    thresholds at quantiles of the validation scores after it (fixed depth among them). The
    candidates to choose from on validation where the objective is not a budget (e.g. mean
    loss + λ · mean steps, which a single rule optimises: a mix is never better)."""
    search = _FlooredSearch(val_hazards, None, None, valid, False, kind, None)
    return [search.rule(floor, threshold) for floor, threshold, _ in search.grid()]


def rule_record(rule: Rule) -> dict[str, Any]:
    """A budget point's rule as plain data (:func:`point_rule` reads it back): its per-step
    score thresholds, and for a mix the second rule's and the first's share of the rows."""
    if isinstance(rule, MixedRule):
        return {
            "score_threshold": rule.first.score_threshold.tolist(),
            "mix": {"share": rule.share, "score_threshold": rule.second.score_threshold.tolist()},
        }
    return {"score_threshold": rule.score_threshold.tolist()}


def point_rule(point: dict[str, Any], kind: str = "hazard") -> Rule:
    """The rule of a budget point (:func:`rule_record`'s fields) for threshold ``kind``."""
    rule_cls = THRESHOLD_KINDS[kind]
    first = rule_cls(torch.tensor(point["score_threshold"], dtype=torch.float64))
    mix = point.get("mix")
    if mix is None:
        return first
    second = rule_cls(torch.tensor(mix["score_threshold"], dtype=torch.float64))
    return MixedRule(first, second, mix["share"])


class BudgetPoint(NamedTuple):
    """One point of a recorded budget curve: its mean cost on validation, its rule (fitted on
    validation) and what the run measured with it on test (``mean_steps``, ``mean_cost``, the
    task's metrics)."""

    val_cost: float
    rule: Rule
    test: dict[str, Any]
    budget: float | None = None  # the budget it was fitted for (None: a curve of other points)


# A point's fields that describe its rule, not what it measured (MSDNet's points have ``p``).
_RULE_FIELDS = ("score_threshold", "mix", "floor_steps", "rule_of_budget", "budget", "p")


def curve_budgets(curve: list[dict[str, Any]], kind: str = "hazard") -> list[BudgetPoint]:
    """A recorded budget curve (:func:`budget_sweep`'s points), cheapest on validation first."""
    points = sorted(curve, key=lambda p: p["val_mean_cost"])
    return [
        BudgetPoint(
            float(p["val_mean_cost"]),
            point_rule(p, kind),
            {k: v for k, v in p.items() if k not in _RULE_FIELDS and not k.startswith("val_")},
            p.get("budget"),
        )
        for p in points
    ]


class _Fitted(NamedTuple):
    """One budget's rule as :func:`budget_sweep` fitted it, with what it costs on validation."""

    rule: Rule
    step: int | None  # the floor step (None without a validation metric)
    spent: torch.Tensor  # (T,) cost of stopping after each step under this floor
    val_cost: float
    val_value: float | None


def budget_sweep(
    val_hazards: torch.Tensor,
    test_hazards: torch.Tensor,
    budgets: Sequence[float],
    test_metric: Callable[[torch.Tensor], dict[str, float]],
    kind: str = "hazard",
    valid: torch.Tensor | None = None,
    costs: torch.Tensor | None = None,
    val_metric: Callable[[torch.Tensor], float] | None = None,
    lower_is_better: bool | None = None,
    decision_costs: torch.Tensor | None = None,
    mixes: bool = True,
) -> list[dict[str, Any]]:
    """The stop model's budget curve: for each budget a threshold fitted on validation
    (mean cost ≤ budget there), applied unchanged to the test hazards.

    ``test_metric(stop_index (N,)) -> {name: value}`` measures the test stop steps. With
    ``val_metric`` (validation stop steps → a number; ``lower_is_better`` says which way), each
    budget's rule is :func:`fit_floored_threshold`'s: the best on validation of a threshold
    after a floor step (or, with ``mixes``, of two such rules shared out over the rows), so no
    budget's rule is worse on validation than fixed depth within it (costed with
    ``decision_costs`` saved before the floor, :func:`floored_costs`). Each point: ``budget``,
    the rule (:func:`rule_record`: ``score_threshold`` and, for a mix, ``mix``; read back with
    :func:`point_rule`), ``val_mean_cost``, ``mean_cost``, ``mean_steps``, (with
    ``val_metric``) ``floor_steps`` — the steps every row runs — and the metric's values. With
    ``val_metric`` a budget takes a cheaper budget's rule where that rule is better on
    validation (``rule_of_budget`` names that budget), so the curve never gets worse on
    validation as the budget grows.
    """
    if kind not in THRESHOLD_KINDS:
        raise ValueError(f"unknown threshold kind {kind!r}; choose one of {list(THRESHOLD_KINDS)}")
    T = test_hazards.shape[1]
    costs = _costs_or_steps(costs, T)
    valid_cpu = torch.ones(T, dtype=torch.bool) if valid is None else valid.bool().cpu()
    decision_costs = skipped_decision_costs(kind, decision_costs)
    search = None
    if val_metric is not None:
        if lower_is_better is None:
            raise ValueError(
                "budget_sweep with a val_metric needs lower_is_better=True (an error, a loss) "
                "or False (an accuracy, a PSNR): which way is better is never guessed"
            )
        search = _FlooredSearch(
            val_hazards, val_metric, costs, valid, lower_is_better, kind, decision_costs
        )
    fitted = []
    for budget in budgets:
        step, spent = None, costs
        if search is None:
            rule = fit_threshold(val_hazards, budget, costs, kind, valid)
        else:
            rule, step = search.fit(budget, mixes)
            spent = floored_costs(costs, decision_costs, valid_cpu, step)
        val_index = stop_indices(val_hazards, rule, valid).cpu()
        value = None if val_metric is None else float(val_metric(val_index))
        fitted.append(_Fitted(rule, step, spent, float(spent[val_index].mean()), value))
    points = []
    for budget, own in zip(budgets, fitted, strict=True):
        chosen, origin = own, {}
        if val_metric is not None:
            # A larger budget keeps a cheaper budget's rule where that one is better on
            # validation: the search only tries thresholds that spend up to the budget, and past
            # some depth more steps can be worse (the curve stays monotone on validation).
            sign = 1.0 if lower_is_better else -1.0
            room = budget + 1e-12 * max(1.0, abs(budget))
            within = [i for i, f in enumerate(fitted) if f.val_cost <= room]
            best = min(
                within,
                key=lambda i: (_ranked(sign, fitted[i].val_value), fitted[i].val_cost),
                default=None,
            )
            if best is not None and _ranked(sign, fitted[best].val_value) < _ranked(
                sign, own.val_value
            ):
                chosen, origin = fitted[best], {"rule_of_budget": float(budgets[best])}
        rule, step, spent = chosen.rule, chosen.step, chosen.spent
        index = stop_indices(test_hazards, rule, valid)
        points.append(
            {
                "budget": float(budget),
                **rule_record(rule),
                **origin,
                "val_mean_cost": chosen.val_cost,
                "mean_cost": float(spent[index.cpu()].mean()),
                "mean_steps": float((index + 1).double().mean()),
                **({} if step is None else {"floor_steps": step + 1}),
                **test_metric(index),
            }
        )
    return points


def fixed_depth_curve(
    num_rows: int,
    test_metric: Callable[[torch.Tensor], dict[str, float]],
    valid: torch.Tensor,
    costs: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """The same model truncated at each valid depth: every row stops at step t."""
    T = valid.shape[0]
    costs = _costs_or_steps(costs, T)
    return [
        {
            "depth": t + 1,
            "mean_cost": float(costs[t]),
            "mean_steps": float(t + 1),
            **test_metric(torch.full((num_rows,), t, dtype=torch.long)),
        }
        for t in range(T)
        if bool(valid[t])
    ]
