"""Step-model state helpers and the policy registry."""

import math
from collections import namedtuple

import pytest
import torch

from stopwise.policies import (
    ConfidencePolicy,
    MLPPolicy,
    classifier_features,
    create_policy,
    list_policies,
    log_probabilities,
    step_encoding,
)
from stopwise.steps import StepModel, cat_state, index_state, state_batch_size, state_device

Pair = namedtuple("Pair", "a b")


def test_index_and_cat_on_nested_states():
    state = {"x": torch.arange(4), "inner": (torch.arange(8).view(4, 2), Pair(torch.ones(4), None))}
    picked = index_state(state, torch.tensor([2, 0]))
    assert picked["x"].tolist() == [2, 0]
    assert picked["inner"][0].tolist() == [[4, 5], [0, 1]]
    assert isinstance(picked["inner"][1], Pair) and picked["inner"][1].b is None
    assert index_state(state, torch.tensor([True, False, False, True]))["x"].tolist() == [0, 3]
    other = {
        "x": -torch.arange(4),
        "inner": (-torch.arange(8).view(4, 2), Pair(torch.zeros(4), None)),
    }
    joined = cat_state([state, other])
    assert joined["x"].tolist() == [0, 1, 2, 3, 0, -1, -2, -3]
    assert joined["inner"][0].shape == (8, 2) and joined["inner"][1].b is None
    # Structures that differ are refused, never silently reduced to the first one's.
    for different in (
        {**other, "inner": (other["inner"][0], Pair(torch.zeros(4), torch.ones(4)))},
        {**other, "extra": torch.zeros(4)},
        {"x": other["x"]},
    ):
        with pytest.raises(ValueError, match="different structure"):
            cat_state([state, different])
    assert state_batch_size(state) == 4 and state_device(state) == torch.device("cpu")
    with pytest.raises(TypeError, match="a state must be"):
        index_state({"x": [1, 2]}, torch.tensor([0]))


@pytest.mark.parametrize(
    "shape, layout",
    [((5, 3, 4, 6), torch.channels_last), ((5, 3, 2, 4, 6), torch.channels_last_3d)],
    ids=["channels_last", "channels_last_3d"],
)
def test_selecting_rows_keeps_a_channels_last_layout(shape, layout):
    """``index_select`` hands back a contiguous (channels-first) copy; a shrinking run's next
    convolution then took the slow path (on this CPU, 24 against 14 ms for a bfloat16 3×3 layer
    on 10 maps of 32×128×128)."""
    plain = torch.randn(shape)
    x = plain.contiguous(memory_format=layout).requires_grad_()
    rows = torch.tensor([4, 0, 2])
    state = index_state({"x": x, "flat": torch.arange(5)}, rows)
    assert state["x"].is_contiguous(memory_format=layout) and not state["x"].is_contiguous()
    assert torch.equal(state["x"], plain[[4, 0, 2]]) and state["flat"].tolist() == [4, 0, 2]
    joined = cat_state([state, index_state({"x": x, "flat": torch.arange(5)}, rows[:1])])
    assert joined["x"].is_contiguous(memory_format=layout)
    state["x"].sum().backward()  # the selection stays differentiable
    n = plain[0].numel()
    assert x.grad.flatten(1).sum(1).tolist() == [n, 0, n, 0, n]
    # A contiguous tensor stays contiguous (and so does one that is both, e.g. one channel).
    assert index_state(plain, rows).is_contiguous()


def test_policy_registry():
    assert {"mlp", "confidence"} <= set(list_policies())
    policy = create_policy("mlp", feature_dim=5, max_steps=4, hidden=(8, 8), init_bias=-2.0)
    features = torch.randn(3, 5)
    assert policy(features, 2).shape == (3,)
    assert policy(features, torch.tensor([0, 1, 3])).shape == (3,)
    with pytest.raises(ValueError, match="unknown policy 'lstm'; choose one of"):
        create_policy("lstm")


def test_mlp_policy_uses_the_step():
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=2, max_steps=5, hidden=(4,))
    features = torch.randn(6, 2)
    assert not torch.allclose(policy(features, 0), policy(features, 4))
    steps = torch.tensor([0, 1, 2, 3, 4, 4])
    per_row = torch.stack([policy(features[i : i + 1], int(steps[i]))[0] for i in range(6)])
    torch.testing.assert_close(policy(features, steps), per_row)


def test_step_encodings():
    steps = torch.tensor([0, 3])
    assert step_encoding(steps, 4).tolist() == [[1, 0, 0, 0], [0, 0, 0, 1]]
    sinusoidal = step_encoding(steps, 10, "sinusoidal")
    assert sinusoidal.shape == (2, 8)
    assert sinusoidal[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # step 3 of T = 10: angles 3π/10 · 2^k, k = 0..3 (frequencies π/T doubling), sines then cosines
    angles = [3 * math.pi / 10, 6 * math.pi / 10, 12 * math.pi / 10, 24 * math.pi / 10]
    expected = [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    assert sinusoidal[1].tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="encoding"):
        step_encoding(steps, 4, "learned")


@pytest.mark.parametrize("hidden", [(), (8,)])
def test_mlp_policy_starts_at_its_init_bias(hidden):
    """With the last layer's weights zeroed, a fresh MLP policy's hazard logit is its
    ``init_bias`` at every step, whatever the features (zero features here)."""
    policy = MLPPolicy(5, 4, hidden=hidden, init_bias=-2.5)
    with torch.no_grad():
        policy.net[-1].weight.zero_()
    for t in range(4):
        assert policy(torch.zeros(3, 5), t).tolist() == [-2.5] * 3


def test_confidence_policy_and_classifier_features():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [40.0, 0.0, 0.0]])
    p = torch.softmax(logits, -1)
    hazard = ConfidencePolicy()(logits, 0)
    torch.testing.assert_close(torch.sigmoid(hazard), p.amax(-1))
    assert torch.isfinite(hazard).all()
    features = classifier_features(logits)
    top2 = p.topk(2, -1).values
    torch.testing.assert_close(features[:, 0], top2[:, 0])
    torch.testing.assert_close(features[:, 1], -(p * p.log()).sum(-1))
    torch.testing.assert_close(features[:, 2], top2[:, 0] - top2[:, 1])
    tie = classifier_features(torch.tensor([[1.0, 3.0, 3.0, 0.0]]))
    assert tie[0, 2] == 0  # two classes share the top: no margin
    one_class = classifier_features(torch.tensor([[0.3], [-2.0]]))
    assert one_class.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]


def test_confidence_is_exact_and_monotone_when_a_class_dominates():
    """Logits [z, 0, …, 0] over C classes: logit(p_max) = z − ln(C − 1) exactly, in float32 too
    (through 1 − p_max it lost precision from z ≈ 15 and tied every z ≥ 17 at one value)."""
    z = torch.linspace(0, 40, 401)
    logits = torch.zeros(401, 10)
    logits[:, 0] = z
    hazard = ConfidencePolicy()(logits, 0)
    torch.testing.assert_close(hazard, z - math.log(9), atol=1e-5, rtol=1e-6)
    assert bool((hazard.diff() > 0).all())
    assert ConfidencePolicy()(torch.tensor([[0.5]]), 0).item() > 1e30  # one class: p = 1
    logits = torch.tensor([[1.0, -math.inf, -math.inf]], requires_grad=True)  # p = 1 again
    ConfidencePolicy()(logits, 0).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_log_probabilities_equal_log_softmax():
    logits = torch.randn(500, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logits[0] = 300.0  # large logits: no overflow
    torch.testing.assert_close(log_probabilities(logits), torch.log_softmax(logits, -1))
    hazard = ConfidencePolicy()(logits, 0)
    torch.testing.assert_close(torch.sigmoid(hazard), torch.softmax(logits, -1).amax(-1))


def test_a_model_updating_its_state_in_place_is_refused_not_silently_wrong():
    """advance() doing ``s["y"] += x``: the predictions kept for earlier steps would all show the
    last step's values (dense mode and unroll stack them at the end); refused with a clear
    error instead. masked and shrink keep each step's values as they go and stay right."""
    import pytest

    from stopwise.inference import ScoreThreshold, run_adaptive
    from stopwise.steps import unroll

    class InPlace(StepModel):
        max_steps = 3

        def start(self, x):
            return {"x": x, "y": torch.zeros_like(x)}

        def advance(self, s, t):
            s["y"] += s["x"]  # in place
            return s

        def predict(self, s, t):
            return s["y"]

    x = torch.ones(4, 2)
    with pytest.raises(ValueError, match="changed in place by a later step"):
        unroll(InPlace(), x)
    policy = lambda features, t: torch.zeros(features.shape[0])  # noqa: E731
    never = ScoreThreshold(float("inf"))
    with pytest.raises(ValueError, match="changed in place"):
        run_adaptive(InPlace(), policy, x, never, "dense")
    for mode in ("masked", "shrink"):  # the last step's prediction: 3 · x
        assert torch.equal(run_adaptive(InPlace(), policy, x, never, mode).predictions, 3 * x)


class Count(StepModel):
    """Three steps adding one to the input: the prediction after step t is x + t + 1."""

    max_steps = 3

    def start(self, x):
        return x

    def advance(self, s, t):
        return s + 1

    def predict(self, s, t):
        return s


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
@pytest.mark.parametrize("rows", [1, 5])
def test_a_policy_returning_a_column_is_refused_in_every_mode(mode, rows):
    """(B, 1) logits instead of (B,): with B = 1 masked mode returned (1, 1) stop steps
    silently, and other batches failed deep in torch; now one clear error."""
    from stopwise.inference import HazardThreshold, hazard_trajectory, run_adaptive

    column = lambda features, t: torch.zeros(features.shape[0], 1)  # noqa: E731
    x = torch.zeros(rows, 2)
    with pytest.raises(
        ValueError, match=rf"hazard logits of shape \({rows},\) at step 0; got \({rows}, 1\)"
    ):
        run_adaptive(Count(), column, x, HazardThreshold(0.5), mode)
    with pytest.raises(ValueError, match="hazard logits of shape"):
        hazard_trajectory(Count(), column, x)
    scalar = lambda features, t: torch.tensor(5.0)  # noqa: E731  (one logit for every row)
    assert (
        run_adaptive(Count(), scalar, x, HazardThreshold(0.5), mode).stop_index.tolist()
        == [0] * rows
    )
    chunked = run_adaptive(Count(), scalar, torch.zeros(5, 2), HazardThreshold(0.5), mode, chunk=2)
    assert chunked.stop_index.tolist() == [0] * 5  # shrink's gathers need one logit per row
    assert hazard_trajectory(Count(), scalar, x).shape == (rows, 3)
    # hazard_trajectory evaluates: no autograd history even for a policy with parameters
    linear = torch.nn.Linear(2, 1)
    hazards = hazard_trajectory(Count(), lambda f, t: linear(f).squeeze(-1), x)
    assert not hazards.requires_grad


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_an_empty_batch_gives_an_empty_result_and_wrong_costs_are_named(mode, chunk):
    from stopwise.inference import HazardThreshold, run_adaptive

    policy = lambda features, t: features.sum(-1)  # noqa: E731
    result = run_adaptive(
        Count(), policy, torch.zeros(0, 4), HazardThreshold(0.5), mode, chunk=chunk
    )
    assert result.predictions.shape == (0, 4) and result.stop_index.shape == (0,)
    assert result.cost.shape == (0,)
    with pytest.raises(ValueError, match=r"step_costs must have shape \(3,\).*got \(2,\)"):
        run_adaptive(Count(), policy, torch.zeros(2, 4), HazardThreshold(0.5), mode,
                     step_costs=torch.ones(2))  # fmt: skip


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
def test_predictions_must_keep_one_shape_and_be_tensors(mode):
    """Step 0 predicting (B, 1) and later steps (B, 3): masked mode broadcast step 0's value
    over three columns silently; now every mode names the step and both shapes."""
    from stopwise.inference import HazardThreshold, run_adaptive

    class Widening(Count):
        def predict(self, s, t):
            return s[:, :1] if t == 0 else s

    class Pair(Widening):
        def predict(self, s, t):
            return (s, s)

        def features(self, s, t):
            return s

    policy = lambda features, t: features.sum(-1)  # noqa: E731 (hazard 1 at step 0 on row 0)
    x = torch.tensor([[5.0, 5.0, 5.0], [-9.0, -9.0, -9.0]])
    with pytest.raises(ValueError, match=r"same shape.*is \((2, )?3,?\).*\((2, )?1,?\)"):
        run_adaptive(Widening(), policy, x, HazardThreshold(0.5), mode)
    with pytest.raises(ValueError, match="prediction must be a tensor; got tuple"):
        run_adaptive(Pair(), lambda f, t: torch.zeros(2), x, HazardThreshold(0.5), mode)


def test_an_mlp_policy_asked_past_its_steps_says_so():
    policy = MLPPolicy(5, 3)  # built for a 3-step model
    assert policy(torch.zeros(2, 5), 2).shape == (2,)
    with pytest.raises(ValueError, match=r"step 3 is outside this policy's steps 0..2"):
        policy(torch.zeros(2, 5), 3)


@pytest.mark.parametrize("mode", ["dense", "masked", "shrink"])
def test_the_default_step_costs_count_the_steps_used(mode):
    """A step model without its own ``step_costs`` costs 1, 2, ..., T: stopping after step t
    (0-based) costs t + 1 steps, so adaptive inference's cost is each row's steps used. Rows
    stop where x₀ + t + 1 ≥ 0 (the logit is the prediction's first entry): by hand 0, 1, 2."""
    from stopwise.inference import HazardThreshold, run_adaptive

    assert Count().step_costs().tolist() == [1.0, 2.0, 3.0]
    x = torch.tensor([[0.0, 9.0], [-1.5, 9.0], [-10.0, 9.0]])
    policy = lambda features, t: features[:, 0]  # noqa: E731
    result = run_adaptive(Count(), policy, x, HazardThreshold(0.5), mode)
    assert result.stop_index.tolist() == [0, 1, 2]
    assert result.cost.tolist() == [1.0, 2.0, 3.0]
    assert result.steps_used.tolist() == [1, 2, 3]


@pytest.mark.parametrize("shape", [(5,), (5, 3), (5, 2, 4)])
def test_the_default_features_are_the_prediction_one_row_each(shape):
    """The default features flatten each row's prediction to (B, F): a (B,) prediction (one
    number per row, as in the toy task) is (B, 1); it failed with an IndexError."""
    x = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    features = Count().features(x, 0)
    assert features.shape == (5, math.prod(shape[1:]))
    assert torch.equal(features[3], x[3].flatten())
