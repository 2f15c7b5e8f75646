"""The parity task's parts: data, step model, ACT's mean-field inference, the thesis posterior and
its stopping rules, the metrics, and the report's choices (best setting on validation, paired
differences against fixed depth)."""

import math

import numpy as np
import pytest
import torch

from stopwise.inference import MODES, run_adaptive
from stopwise.objectives import act_halting, act_output
from stopwise.stats import average_ranks, spearman
from stopwise.steps import unroll
from stopwise.tasks.parity import (
    METHODS,
    ACTRule,
    MeanFieldACT,
    ParityGRU,
    infer,
    posterior_logits,
    sample_parity,
)
from stopwise.tasks.parity.metrics import evaluate_rule
from stopwise.tasks.parity.report import (
    paired_vs_fixed_depth,
    sensitivity_lines,
    summarize,
)


def test_parity_vectors_have_k_signed_entries_and_the_right_target():
    batch = sample_parity(2000, 9, (2, 5), torch.Generator().manual_seed(0))
    nonzero = (batch.x != 0).sum(-1)
    assert torch.equal(nonzero, batch.k)
    assert int(batch.k.min()) == 2 and int(batch.k.max()) == 5
    assert set(batch.x.unique().tolist()) == {-1.0, 0.0, 1.0}
    for row in range(50):
        plus = sum(1 for v in batch.x[row].tolist() if v == 1.0)
        assert batch.y[row].item() == plus % 2
    # Positions and signs are spread: every position is used and both targets occur evenly.
    assert bool((batch.x != 0).any(0).all())
    assert abs(batch.y.mean().item() - 0.5) < 0.05
    again = sample_parity(2000, 9, (2, 5), torch.Generator().manual_seed(0))
    assert torch.equal(batch.x, again.x)


@pytest.mark.parametrize("k_range", [(0, 3), (3, 2), (1, 10), (1,)])
def test_bad_k_ranges_are_rejected(k_range):
    with pytest.raises(ValueError, match="k range"):
        sample_parity(4, 9, k_range, torch.Generator())


def test_step_model_reads_the_first_step_flag_and_rejects_bad_shapes():
    torch.manual_seed(0)
    model = ParityGRU(6, 8, 5)
    x = sample_parity(3, 6, (1, 6), torch.Generator().manual_seed(1)).x
    trajectory = unroll(model, x, with_features=True)
    assert trajectory.predictions.shape == (3, 5) and trajectory.features.shape == (3, 5, 8)
    # The same hidden state fed with and without the flag gives different next states.
    state = model.start(x)
    assert not torch.allclose(model.advance(state, 0)["h"], model.advance(state, 1)["h"])
    with pytest.raises(ValueError, match="shape"):
        model.start(torch.zeros(3, 7))


@pytest.mark.parametrize("mode", MODES)
def test_mean_field_act_inference_equals_act_on_the_full_trajectory(mode):
    torch.manual_seed(0)
    model = ParityGRU(8, 16, 7, halting_bias=-1.0).eval()
    x = sample_parity(300, 8, (1, 8), torch.Generator().manual_seed(2)).x
    with torch.no_grad():
        trajectory = unroll(model, x, with_features=True)
        halting = act_halting(model.halting(trajectory.features), eps=0.05)
        expected = act_output(halting.weights, trajectory.predictions)
        result = run_adaptive(MeanFieldACT(model), model.halting, x, ACTRule(0.05), mode)
    assert 1 < halting.steps.float().mean() < 7  # some rows halt early, not all at one step
    assert torch.equal(result.steps_used, halting.steps)
    assert torch.allclose(result.predictions, expected, atol=1e-6)


def test_act_rule_halts_when_the_sum_reaches_one_minus_eps_exactly():
    """Graves Eq. 8: N = min{n : Σ_{t≤n} h_t ≥ 1 − ε}. With ε = 0.5 and halting logits 0
    (h = 1/2 exactly) the sum reaches 1 − ε at the first step, so every row halts there; and
    on random logits the rule stops where a plain loop over the running sum says."""
    rule = ACTRule(0.5)
    stop, carry = rule.decide(torch.zeros(3), 0, rule.init_carry(3, 4, "cpu"))
    assert stop.tolist() == [True, True, True] and carry.tolist() == [0.5, 0.5, 0.5]
    logits = torch.randn(50, 6, generator=torch.Generator().manual_seed(0)) - 1.0
    rule, eps = ACTRule(0.05), 0.05
    carry, halted = rule.init_carry(50, 6, "cpu"), torch.full((50,), -1)
    for t in range(6):
        stop, carry = rule.decide(logits[:, t], t, carry)
        halted = torch.where((halted < 0) & stop, t, halted)
    for i in range(50):
        total, expected = 0.0, -1
        for t in range(6):
            total += 1 / (1 + math.exp(-float(logits[i, t])))
            if total >= 1 - eps:
                expected = t
                break
        assert int(halted[i]) == expected


def test_posterior_logits_are_minus_the_exclusive_cumulative_sum():
    z = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    assert posterior_logits(z).tolist() == [[0.0, -0.5, 0.5, -1.5]]


def first_local_max(a: list[float]) -> int:
    for t in range(len(a) - 1):
        if a[t + 1] <= a[t]:
            return t
    return len(a) - 1


class RuggedHead(torch.nn.Module):
    """A stop logit that changes sign often along the steps, so posteriors have many local maxima."""

    def __init__(self, hidden: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(hidden) * 30)

    def forward(self, features, t=0):
        return torch.sin(features @ self.w)


@pytest.mark.parametrize("mode", MODES)
def test_thesis_rules_greedy_is_the_first_local_max_and_mode_the_argmax(mode):
    torch.manual_seed(3)
    model = ParityGRU(8, 16, 9).eval()
    head = RuggedHead(16)
    x = sample_parity(400, 8, (1, 8), torch.Generator().manual_seed(4)).x
    with torch.no_grad():
        trajectory = unroll(model, x, with_features=True)
        a = posterior_logits(head(trajectory.features))
    greedy_logits, greedy = infer("greedy", model, head, x, mode)
    mode_logits, mode_index = infer("mode", model, head, x, mode)
    expected_greedy = [first_local_max(row) for row in a.tolist()]
    assert greedy.tolist() == expected_greedy
    assert mode_index.tolist() == a.argmax(-1).tolist()
    rows = torch.arange(400)
    assert torch.allclose(greedy_logits, trajectory.predictions[rows, greedy], atol=1e-6)
    assert torch.allclose(mode_logits, trajectory.predictions[rows, mode_index], atol=1e-6)
    assert (greedy <= mode_index).all()  # the first local max comes no later than the global one
    assert (greedy != mode_index).any()  # the rugged posteriors make the two rules differ


def test_every_rule_gives_the_same_stops_in_every_mode():
    torch.manual_seed(5)
    model = ParityGRU(8, 16, 6).eval()
    x = sample_parity(200, 8, (1, 8), torch.Generator().manual_seed(6)).x
    for rule in ["act", "sample", "median", "hazard", "greedy"]:
        outputs = [infer(rule, model, model.halting, x, m, sample_seed=9) for m in MODES]
        for logits, stop in outputs[1:]:
            assert torch.equal(stop, outputs[0][1]), rule
            assert torch.allclose(logits, outputs[0][0], atol=1e-6), rule
    with pytest.raises(ValueError, match="unknown inference rule"):
        infer("nope", model, model.halting, x)


def test_average_ranks_and_spearman_by_hand():
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # Ranks (1, 2, 3, 4) and (1, 3, 2, 4): ρ = 1 − 6·Σd²/(n(n²−1)) = 1 − 6·2/60 = 0.8.
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_evaluate_rule_splits_interpolation_and_extrapolation():
    logits = torch.tensor([1.0, -1.0, 1.0, 1.0, -2.0])
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])
    k = torch.tensor([1, 2, 2, 5, 6])
    stop = torch.tensor([0, 1, 1, 3, 4])
    result = evaluate_rule(logits, stop, y, k, train_k=(1, 4))
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["interpolation"] == pytest.approx(2 / 3)
    assert result["extrapolation"] == pytest.approx(1 / 2)
    assert result["mean_steps"] == pytest.approx((1 + 2 + 2 + 4 + 5) / 5)
    assert result["spearman"] == pytest.approx(1.0)
    assert [e["k"] for e in result["per_k"]] == [1, 2, 5, 6]
    assert result["per_k"][1] == {"k": 2, "count": 2, "accuracy": 0.5, "mean_steps": 2.0}
    constant = evaluate_rule(logits, torch.zeros(5, dtype=torch.long), y, k, train_k=(1, 6))
    assert constant["spearman"] is None and constant["extrapolation"] is None


def _row(method, value, seed, interpolation, validation, rule=None, variant="", steps=3.0, **kw):
    """One job row as the report sees it (a test accuracy and a validation accuracy)."""
    lr = kw.get("lr", 0.003)
    return {
        "id": f"{method}-{value:g}-lr{lr:g}-s{seed}",
        "method": method,
        "value": value,
        "lr": lr,
        "seed": seed,
        "variant": variant,
        "rule": rule or METHODS[method].rules[0],
        "accuracy": interpolation,
        "interpolation": interpolation,
        "extrapolation": None,
        "mean_steps": steps,
        "spearman": None,
        "per_k": [{"k": 1, "count": 1, "accuracy": interpolation, "mean_steps": steps}],
        "steps_run": steps,
        "validation_accuracy": validation,
        "validation_steps": kw.get("validation_steps", steps),
        "train_seconds": 1.0,
    }


def test_best_setting_is_chosen_on_validation_never_on_test():
    rows = []
    for seed in (0, 1):
        # τ = 0.2 is best on validation and worst on test; τ = 0.3 ties it on validation but
        # needs more validation steps; τ = 0.1 is best on test.
        rows.append(_row("act", 0.1, seed, interpolation=0.99, validation=0.80))
        rows.append(_row("act", 0.2, seed, interpolation=[0.70, 0.60][seed], validation=0.90))
        rows.append(_row("act", 0.3, seed, 0.95, 0.90, validation_steps=5.0))
    lines = summarize(rows)
    assert [(line["value"], line["best"]) for line in lines] == [
        (0.1, False), (0.2, True), (0.3, False),
    ]  # fmt: skip
    best = lines[1]
    assert best["interpolation_mean"] == pytest.approx(0.65)
    assert best["interpolation_std"] == pytest.approx(math.sqrt(2 * 0.05**2 / 1))  # sample sd
    assert best["interpolation_min"] == 0.60 and best["successes"] == 0
    swept = sensitivity_lines(lines)
    assert [line["value"] for line in swept] == [0.1, 0.2, 0.3]


def test_paired_difference_against_fixed_depth_by_hand():
    fixed = {2: [0.90, 0.95, 0.93], 4: [0.99, 0.97, 0.98]}  # depth 4 wins on validation
    act = [0.80, 0.85, 0.82]
    rows = [
        _row("fixed", depth, seed, acc, validation=acc, steps=depth)
        for depth, accs in fixed.items()
        for seed, acc in enumerate(accs)
    ]
    rows += [_row("act", 0.1, s, a, validation=a, steps=2.0 + s) for s, a in enumerate(act)]
    lines = summarize(rows)
    (paired,) = paired_vs_fixed_depth(rows, lines)
    assert paired["fixed_depth"] == 4
    diffs = [a - f for a, f in zip(act, fixed[4], strict=True)]  # -0.19, -0.12, -0.16
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    accuracy = paired["interpolation"]
    assert accuracy["mean"] == pytest.approx(mean)
    assert (accuracy["lo"], accuracy["hi"]) == pytest.approx((mean - half, mean + half))
    assert accuracy["below_zero"]
    assert paired["mean_steps"]["per_seed"] == pytest.approx({0: -2.0, 1: -1.0, 2: 0.0})
    assert paired_vs_fixed_depth(rows[6:], summarize(rows[6:])) == []


def test_budget_curve_ends_at_full_depth_and_matches_a_plain_loop():
    from stopwise.tasks.parity.config import ParityConfig
    from stopwise.tasks.parity.data import evaluation_set
    from stopwise.tasks.parity.experiment import budget_curve
    from stopwise.tasks.parity.models import HaltingHead, ParityGRU

    config = ParityConfig(n=8, train_k=[1, 8], test_k=[1, 8], max_steps=5, val_size=300)
    config.test_size = 400
    torch.manual_seed(0)
    model, head = ParityGRU(8, 16, 5), HaltingHead(16)
    validation = evaluation_set(config, "validation", torch.Generator().manual_seed(1))
    test = evaluation_set(config, "test", torch.Generator().manual_seed(2))
    curve = budget_curve(model, head, validation, test, config, "cpu")
    assert [p["budget"] for p in curve["points"]][-1] == 5
    # Fixed depth t, and each point's rule (its per-step thresholds, +inf before its floor; a
    # mix gives row i the second thresholds unless frac((i + 1)·0.618…) < its share) applied to
    # the test vectors, by a plain loop over the model's steps.
    right, hazards = [], []
    with torch.no_grad():
        state = model.start(test.x)
        for t in range(5):
            state = model.advance(state, t)
            logits, features = model.observe(state, t)
            right.append(((logits > 0).float() == test.y).float())
            hazards.append(head(features))
            assert curve["fixed_depth"][t]["accuracy"] == pytest.approx(float(right[t].mean()))
    golden = (math.sqrt(5) - 1) / 2
    for point in curve["points"]:
        mix = point.get("mix", {"share": 1.0, "score_threshold": None})
        for threshold in (point["score_threshold"], mix["score_threshold"] or [math.inf]):
            assert all(math.isinf(v) for v in threshold[: point["floor_steps"] - 1])
        chosen = []
        for i in range(len(test.y)):
            first = ((i + 1) * golden) % 1.0 < mix["share"]
            threshold = point["score_threshold"] if first else mix["score_threshold"]
            stop = next((t for t in range(4) if float(hazards[t][i]) >= threshold[t]), 4)
            chosen.append(float(right[stop][i]))
        assert point["accuracy"] == pytest.approx(sum(chosen) / len(chosen))


def test_a_test_set_without_a_vector_in_the_training_k_range_is_refused():
    """The interpolation accuracy is over test vectors whose k is in train_k: a test set drawn
    with none (a small test_size, a narrow train_k) is refused by name instead of failing in the
    report after training."""
    from stopwise.tasks.parity.config import ParityConfig
    from stopwise.tasks.parity.data import evaluation_set

    config = ParityConfig(n=8, train_k=[1, 1], test_k=[1, 8], max_steps=5, test_size=2)
    outcomes = []
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        drawn = torch.Generator().manual_seed(seed)  # the same draws, read by hand
        k = sample_parity(2, 8, [1, 8], drawn).k
        if bool((k == 1).any()):
            assert torch.equal(evaluation_set(config, "test", generator).k, k)
            outcomes.append("kept")
        else:
            with pytest.raises(ValueError, match=r"no k in train_k=\[1, 1\].*raise test_size"):
                evaluation_set(config, "test", generator)
            outcomes.append("refused")
    assert {"kept", "refused"} <= set(outcomes)  # both branches ran


def _plain_steps(model, head, batch):
    """Per step t, by a plain loop over the model's steps: whether each vector's prediction is
    right, and the head's hazard logit."""
    right, hazards = [], []
    with torch.no_grad():
        state = model.start(batch.x)
        for t in range(model.max_steps):
            state = model.advance(state, t)
            logits, features = model.observe(state, t)
            right.append(((logits > 0).float() == batch.y).tolist())
            hazards.append(head(features).tolist())
    return right, hazards


def _plain_stops(point, hazards, steps):
    """The stop of each row under a budget point's rule (thresholds and golden-ratio mix)."""
    golden = (math.sqrt(5) - 1) / 2
    mix = point.get("mix", {"share": 1.0, "score_threshold": None})
    stops = []
    for i in range(len(hazards[0])):
        first = ((i + 1) * golden) % 1.0 < mix["share"]
        threshold = point["score_threshold"] if first else mix["score_threshold"]
        stops.append(
            next((t for t in range(steps - 1) if hazards[t][i] >= threshold[t]), steps - 1)
        )
    return stops


def test_budget_curve_fits_its_rules_on_the_validation_vectors(monkeypatch):
    """The curve's validation metric is the validation accuracy (a plain loop over the
    validation vectors, at every fixed depth and at random stops); each point's val_mean_cost
    is its rule's mean steps on validation, and validation accuracy never falls as the budget
    grows (a larger budget keeps a cheaper rule that is better on validation)."""
    from stopwise.tasks.parity import experiment
    from stopwise.tasks.parity.config import ParityConfig
    from stopwise.tasks.parity.data import evaluation_set
    from stopwise.tasks.parity.models import HaltingHead

    config = ParityConfig(n=8, train_k=[1, 8], test_k=[1, 8], max_steps=5, val_size=300)
    config.test_size, config.curve_points = 400, 5
    torch.manual_seed(0)
    model, head = ParityGRU(8, 16, 5), HaltingHead(16)
    with torch.no_grad():
        head.linear.weight.mul_(4)  # hazards spread over (0, 1): rules differ by budget
    validation = evaluation_set(config, "validation", torch.Generator().manual_seed(1))
    test = evaluation_set(config, "test", torch.Generator().manual_seed(2))
    seen = {}
    sweep = experiment.budget_sweep

    def spy(*args, **kwargs):
        seen["val_metric"] = kwargs["val_metric"]
        return sweep(*args, **kwargs)

    monkeypatch.setattr(experiment, "budget_sweep", spy)
    curve = experiment.budget_curve(model, head, validation, test, config, "cpu")
    right, hazards = _plain_steps(model, head, validation)
    n = len(validation.y)
    stops = [torch.full((n,), t) for t in range(5)]
    stops += [torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(s)) for s in (3, 4)]
    for index in stops:
        expected = sum(right[t][i] for i, t in enumerate(index.tolist())) / n
        assert seen["val_metric"](index) == pytest.approx(expected)
    accuracies = []
    for point in curve["points"]:
        chosen = _plain_stops(point, hazards, 5)
        assert point["val_mean_cost"] == pytest.approx(sum(t + 1 for t in chosen) / n)
        assert point["val_mean_cost"] <= point["budget"] + 1e-9
        accuracies.append(sum(right[t][i] for i, t in enumerate(chosen)) / n)
    assert accuracies == sorted(accuracies)
    assert len(set(accuracies)) > 1


@pytest.mark.parametrize("mode", MODES)
def test_hazard_median_and_sample_rules_match_plain_loops(mode):
    """From the per-step hazards λ_t = σ(z_t) of a plain loop: ``hazard`` stops at the first t
    with λ_t ≥ ½, ``median`` at the first t with 1 − ∏_{τ≤t}(1 − λ_τ) ≥ ½, ``sample`` at the
    first t with u_{i,t} < λ_t (the uniforms u (B, T) drawn from the rule's seed); each stops at
    the last step if nothing fires before it, and returns that step's logit."""
    from stopwise.tasks.parity.models import HaltingHead

    torch.manual_seed(8)
    T = 6
    model, head = ParityGRU(8, 16, T).eval(), HaltingHead(16, bias=-1.0)
    with torch.no_grad():
        head.linear.weight.mul_(6)  # hazards spread over (0, 1)
    x = sample_parity(500, 8, (1, 8), torch.Generator().manual_seed(9)).x
    logits, lam = [], []
    with torch.no_grad():
        state = model.start(x)
        for t in range(T):
            state = model.advance(state, t)
            prediction, features = model.observe(state, t)
            logits.append(prediction.tolist())
            lam.append([1 / (1 + math.exp(-z)) for z in head(features).tolist()])
    u = torch.rand(500, T, generator=torch.Generator().manual_seed(11)).tolist()

    def first(fires: list[bool]) -> int:
        return next((t for t in range(T - 1) if fires[t]), T - 1)

    expected = {"hazard": [], "median": [], "sample": []}
    for i in range(500):
        survive = [1.0]
        for t in range(T):
            survive.append(survive[-1] * (1 - lam[t][i]))
        expected["hazard"].append(first([lam[t][i] >= 0.5 for t in range(T)]))
        expected["median"].append(first([1 - survive[t + 1] >= 0.5 for t in range(T)]))
        expected["sample"].append(first([u[i][t] < lam[t][i] for t in range(T)]))
    for rule, stops in expected.items():
        out, index = infer(rule, model, head, x, mode, sample_seed=11)
        assert index.tolist() == stops, rule
        assert out.tolist() == pytest.approx([logits[t][i] for i, t in enumerate(stops)], abs=1e-5)
        assert len(set(stops)) >= 3, rule  # the rule stops at several steps
    assert expected["hazard"] != expected["median"] != expected["sample"]


def test_the_budget_curves_figure_colours_each_method_as_the_other_figures_do():
    """A method keeps its colour across the parity figures: the budget curves were coloured by
    their place among the curves (C0, C1, …), so the first stop model there had fixed depth's
    colour in accuracy_vs_k and steps_vs_k."""
    from types import SimpleNamespace

    from matplotlib.colors import to_hex

    from stopwise.tasks.parity.report import _figures

    per_k = [{"k": 1, "accuracy": 0.5, "mean_steps": 1.0}]
    lines = [
        {"label": label, "method": method, "rule": rule, "best": True, "main_rule": True,
         "per_k": per_k}
        for label, method, rule in (("Fixed depth", "fixed", "fixed"), ("ACT", "act", "act"),
                                    ("L2S", "l2s", "hazard"))
    ]  # fmt: skip
    points = [{"mean_steps": 1.0, "accuracy": 0.5, "fixed_accuracy": 0.5}]
    curves = [{"label": "L2S", "points": points}]
    config = SimpleNamespace(train_k=[1, 2], test_k=[1, 2])
    rows = [{"method": "l2s", "variant": "", "rule": "hazard", "steps_run": 1.0,
             "interpolation": 0.5}]  # fmt: skip
    figures = _figures(rows, lines, curves, config)

    def colours(name: str) -> dict[str, str]:
        return {
            line.get_label().split(" / ")[0].split(": ")[0]: to_hex(line.get_color())
            for line in figures[name].axes[0].get_lines()
        }

    assert colours("budget_curves")["L2S"] == colours("accuracy_vs_k")["L2S"]


def test_the_budget_curves_figure_draws_each_line_in_step_order():
    """A curve's points come in threshold order; a later one may take fewer mean steps, and the
    line drawn through them doubled back."""
    from types import SimpleNamespace

    from stopwise.tasks.parity.report import _figures

    per_k = [{"k": 1, "accuracy": 0.5, "mean_steps": 1.0}]
    lines = [{"label": "L2S", "method": "l2s", "rule": "hazard", "best": True, "main_rule": True,
              "per_k": per_k}]  # fmt: skip
    steps = [1.0, 3.0, 2.0]
    points = [{"mean_steps": s, "accuracy": s / 4, "fixed_accuracy": s / 5} for s in steps]
    rows = [{"method": "l2s", "variant": "", "rule": "hazard", "steps_run": 1.0,
             "interpolation": 0.5}]  # fmt: skip
    config = SimpleNamespace(train_k=[1, 2], test_k=[1, 2])
    figure = _figures(rows, lines, [{"label": "L2S", "points": points}], config)["budget_curves"]
    for line in figure.axes[0].get_lines():
        assert list(line.get_xdata()) == [1.0, 2.0, 3.0]
    stop = figure.axes[0].get_lines()[0]
    assert list(stop.get_ydata()) == [25.0, 50.0, 75.0]  # each y stays with its x
