"""Multi-exit parts against independent references: meta allocation, MSDNet thresholds, the
functional virtual SGD step, L2W meta gradients (finite differences, a real optimizer step), MAC
counts by hand, shrink vs dense execution, exit losses."""

import copy
import math
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stopwise.inference import (
    ScoreThreshold,
    exit_distribution,
    fit_exit_thresholds,
    run_adaptive,
    stop_indices,
)
from stopwise.macs import count_macs
from stopwise.policies import ConfidencePolicy
from stopwise.tasks.multi_exit.l2w import (
    MetaStep,
    WeightNet,
    allocate_meta,
    meta_gradient,
    meta_objective,
    sgd_step_scale,
    sgd_virtual_step,
)
from stopwise.tasks.multi_exit.methods import head_costs, meta_lr_at
from stopwise.tasks.multi_exit.metrics import (
    accuracy_at_budgets,
    accuracy_by_group,
    apply_thresholds,
    choose_on_validation,
    exit_hazards,
    exit_logits,
    exit_metric,
    msdnet_rule,
    msdnet_thresholds,
    time_early_exit,
    with_validation_accuracy,
)
from stopwise.tasks.multi_exit.models import (
    BatchNorm,
    ExitPolicy,
    MultiExitCNN,
    SignalTapConv,
    count_policy_macs,
    count_step_macs,
    exit_losses,
    fastest_inference_copy,
    fold_batchnorm,
    fold_stem,
    inference_copy,
    running_stats_frozen,
)


def tiny_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return MultiExitCNN(2, (3, 4, 5), (1, 2, 2), head_width=3, classes=4).to(dtype)


def tiny_batch(n=16, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 4, (n,), generator=g)


# ---------------------------------------------------------------- meta-data allocation


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 80), K=st.integers(2, 6), p=st.floats(0.05, 1.95), seed=st.integers(0, 99))
def test_allocation_is_a_partition_with_msdnet_sizes_and_most_confident_first(n, K, p, seed):
    confidence = torch.rand(n, K, generator=torch.Generator().manual_seed(seed))
    q = exit_distribution(p, K)
    exits = allocate_meta(confidence, q)
    assert exits.shape == (n,) and exits.min() >= 0 and exits.max() <= K - 1  # covering, disjoint
    counts = torch.bincount(exits, minlength=K)
    expected = [math.floor(n * float(q[k])) for k in range(K - 1)]
    assert counts[:-1].tolist() == expected
    assert int(counts[-1]) == n - sum(expected)
    # exit k took the most confident (at exit k) of the samples no earlier exit took
    for k in range(K - 1):
        mine = confidence[exits == k, k]
        later = confidence[exits > k, k]
        if len(mine) and len(later):
            assert mine.min() >= later.max()


def test_allocation_rejects_a_wrong_distribution():
    with pytest.raises(ValueError, match="q must have shape"):
        allocate_meta(torch.rand(5, 3), torch.ones(4) / 4)


# ---------------------------------------------------------------- MSDNet thresholds


@pytest.mark.parametrize("p", [0.1, 0.75, 1.0, 1.9])
def test_exit_thresholds_reproduce_the_target_distribution(p):
    K, N = 4, 4000
    g = torch.Generator().manual_seed(3)
    # Synthetic confidences: later exits are more confident, samples differ in difficulty.
    difficulty = torch.randn(N, 1, generator=g)
    val = torch.arange(K) * 0.7 - difficulty + 0.5 * torch.randn(N, K, generator=g)
    q = exit_distribution(p, K)
    rule = ScoreThreshold(fit_exit_thresholds(val, q))
    counts = torch.bincount(stop_indices(val.double(), rule), minlength=K)
    expected = [math.floor(N * float(q[k])) for k in range(K - 1)]
    assert counts[:-1].tolist() == expected  # exact on the fitting split (no ties)
    # and close to q on a fresh sample of the same distribution
    difficulty = torch.randn(N, 1, generator=g)
    test = torch.arange(K) * 0.7 - difficulty + 0.5 * torch.randn(N, K, generator=g)
    fractions = torch.bincount(stop_indices(test.double(), rule), minlength=K).double() / N
    assert torch.allclose(fractions, q, atol=0.03)


def test_budgeted_curve_is_fitted_on_validation_spans_the_costs_and_interpolates():
    g = torch.Generator().manual_seed(0)
    K, C = 3, 5
    val_logits = torch.randn(300, K, C, generator=g)
    test_logits = torch.randn(300, K, C, generator=g)
    test_y = torch.randint(0, C, (300,), generator=g)
    costs = torch.tensor([1.0, 3.0, 6.0], dtype=torch.float64)
    val_scores = exit_hazards(ConfidencePolicy(), val_logits)
    fitted = msdnet_thresholds(val_scores, costs)
    correct = test_logits.argmax(-1) == test_y.unsqueeze(1)
    points = apply_thresholds(fitted, exit_hazards(ConfidencePolicy(), test_logits),
                              exit_metric(correct), costs)  # fmt: skip
    assert len(points) == 39 and [pt["p"] for pt in points][:2] == [0.05, 0.1]
    for point, fit in zip(points, fitted, strict=True):
        assert point["score_threshold"] == fit["score_threshold"]  # test scores change nothing
        assert costs[0] <= point["mean_cost"] <= costs[-1]
        assert abs(sum(point["exit_fractions"]) - 1) < 1e-12
        # validation exits follow q exactly (up to the floor)
        q = exit_distribution(point["p"], K)
        assert abs(point["val_mean_cost"] - float((q * costs).sum())) < 6 * K / 300 + 1e-9
        # accuracy and exit fractions against a plain loop over rows
        exits = [
            next(k for k in range(K) if k == K - 1 or
                 float(torch.softmax(test_logits[i, k], -1).max()) >= _confidence(point, k))
            for i in range(300)
        ]  # fmt: skip
        right = [bool(correct[i, k]) for i, k in enumerate(exits)]
        assert point["accuracy"] == pytest.approx(sum(right) / 300)
        assert point["exit_fractions"] == pytest.approx([exits.count(k) / 300 for k in range(K)])
    curve = [{"mean_cost": 1.0, "accuracy": 0.5}, {"mean_cost": 3.0, "accuracy": 0.7}]
    assert accuracy_at_budgets(curve, [0.5, 2.0, 3.0, 4.0]) == [None, pytest.approx(0.6), 0.7, None]


def _confidence(point, k):
    """The confidence threshold of exit k: the logit threshold mapped back through sigmoid."""
    threshold = point["score_threshold"][k]
    return 1 / (1 + math.exp(-threshold)) if math.isfinite(threshold) else float(threshold > 0)


# ---------------------------------------------------------------- the virtual SGD step


def _optimizer_with_state(model, **kwargs):
    optimizer = torch.optim.SGD(model.parameters(), **kwargs)
    x, y = tiny_batch(8, seed=5)
    exit_losses(model(x), y).sum(1).mean().backward()
    optimizer.step()  # fills the momentum buffers
    optimizer.zero_grad()
    return optimizer


def test_virtual_step_equals_a_hand_computed_momentum_and_weight_decay_step():
    model = tiny_model()
    lr, mu, wd = 0.1, 0.9, 0.01
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=mu, weight_decay=wd)
    params = dict(model.named_parameters())
    grads = {k: torch.randn_like(p) for k, p in params.items()}
    # first step: no momentum buffer yet, the buffer is the direction itself
    first = sgd_virtual_step(model, optimizer, params, grads)
    for k, p in params.items():
        assert torch.allclose(first[k], p - lr * (grads[k] + wd * p))
    optimizer = _optimizer_with_state(model, lr=lr, momentum=mu, weight_decay=wd)
    params = dict(model.named_parameters())
    virtual = sgd_virtual_step(model, optimizer, params, grads)
    for k, p in params.items():
        buf = optimizer.state[p]["momentum_buffer"]
        assert torch.allclose(virtual[k], p - lr * (mu * buf + grads[k] + wd * p))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0.05},
        {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.3},
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    ],
)
def test_virtual_step_equals_the_real_optimizer_step_and_changes_nothing(kwargs):
    model = tiny_model()
    optimizer = _optimizer_with_state(model, **kwargs)
    x, y = tiny_batch(8, seed=9)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(exit_losses(model(x), y).sum(1).mean(), list(params.values()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(optimizer.state_dict())
    virtual = sgd_virtual_step(model, optimizer, params, dict(zip(params, grads, strict=True)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert str(optimizer.state_dict()) == str(saved)

    for p, g in zip(model.parameters(), grads, strict=True):
        p.grad = g.clone()
    optimizer.step()
    for k, p in model.named_parameters():
        assert torch.allclose(virtual[k], p, atol=1e-12), k


def test_step_scale_is_the_slope_of_the_virtual_step_in_the_gradient():
    for kwargs in ({"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "dampening": 0.2, "nesterov": False},
                   {"lr": 0.1, "momentum": 0.9, "nesterov": True}):  # fmt: skip
        model = tiny_model()
        optimizer = _optimizer_with_state(model, **kwargs)
        params = dict(model.named_parameters())
        zero = {k: torch.zeros_like(p) for k, p in params.items()}
        one = {k: torch.ones_like(p) for k, p in params.items()}
        a = sgd_virtual_step(model, optimizer, params, zero)
        b = sgd_virtual_step(model, optimizer, params, one)
        for k, s in sgd_step_scale(model, optimizer).items():
            assert torch.allclose(a[k] - b[k], torch.full_like(a[k], s)), (kwargs, k)


def test_step_scale_on_the_first_step_is_the_slope_of_torch_sgd_without_dampening():
    """On the first step (no momentum buffer) torch.optim.SGD sets the buffer to the gradient
    itself, dampening not applied: the step scale is lr (lr(1 + μ) with Nesterov), measured
    here as the slope of two real optimizer steps from the same state."""
    for kwargs in ({"lr": 0.1, "momentum": 0.9, "dampening": 0.3},
                   {"lr": 0.1, "momentum": 0.9, "nesterov": True}):  # fmt: skip
        model = tiny_model()
        optimizer = torch.optim.SGD(model.parameters(), **kwargs)
        scales = sgd_step_scale(model, optimizer)
        after = []
        for value in (0.0, 1.0):
            twin = copy.deepcopy(model)
            real = torch.optim.SGD(twin.parameters(), **kwargs)
            for p in twin.parameters():
                p.grad = torch.full_like(p, value)
            real.step()
            after.append(dict(twin.named_parameters()))
        nesterov = kwargs.get("nesterov", False)
        for k, s in scales.items():
            assert s == pytest.approx(0.1 * (1.9 if nesterov else 1.0)), (kwargs, k)
            slope = after[0][k].detach() - after[1][k].detach()
            assert torch.allclose(slope, torch.full_like(slope, s)), (kwargs, k)


def test_virtual_step_rejects_other_optimizers():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match="SGD"):
        sgd_virtual_step(model, optimizer, dict(model.named_parameters()), {})


# ---------------------------------------------------------------- meta gradients


def _official_meta_loss(logits, targets, q, form="per-exit"):
    """L2W's meta loss written out from the official code / paper (L2W-DEN
    ``tools/main_cifar_DDP.py``), one sample at a time: for exits k = 1..K−1 in order, S_k is the
    ⌊n·q_k⌋ samples with the highest max-softmax at exit k among those no earlier exit took;
    exit K takes the rest; meta_loss = Σ_k (1/|S_k|) Σ_{i∈S_k} CE(f_k(x_i), y_i), skipping empty
    S_k. ``form="pooled"`` divides the whole sum by n instead; ``"last"`` scores every sample
    at exit K; ``"all"`` every sample at every exit, Σ_k (1/n) Σ_i CE_ik (MW-Net's objective
    summed over the exits, no allocation). A python float; ``logits (n, K, C)``."""
    n, K = logits.shape[:2]

    def ce(i, k):
        row = [float(v) for v in logits[i, k]]
        top = max(row)
        return top + math.log(sum(math.exp(v - top) for v in row)) - row[int(targets[i])]

    if form == "last":
        return sum(ce(i, K - 1) for i in range(n)) / n
    if form == "all":
        return sum(sum(ce(i, k) for i in range(n)) / n for k in range(K))
    taken, total, pooled = set(), 0.0, 0.0
    for k in range(K):
        free = [i for i in range(n) if i not in taken]
        size = math.floor(n * float(q[k])) if k < K - 1 else len(free)

        def confidence(i, k=k):
            row = [float(v) for v in logits[i, k]]
            return max(math.exp(v) for v in row) / sum(math.exp(v) for v in row)

        chosen = sorted(free, key=lambda i: -confidence(i))[:size]
        taken.update(chosen)
        losses = [ce(i, k) for i in chosen]
        pooled += sum(losses)
        if losses:
            total += sum(losses) / len(losses)
    return pooled / n if form == "pooled" else total


def _reference_meta_loss(model, weight_net, optimizer, train, meta, q, form="per-exit"):
    """L_meta(θ̂) the plain way: copy the model, take a real SGD step on the weighted loss of
    the train half, score the meta half with the meta loss written out as a loop."""
    clone = copy.deepcopy(model)
    opt = torch.optim.SGD(clone.parameters(), **{k: v for k, v in optimizer.defaults.items()})
    opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    (x_tr, y_tr), (x_me, y_me) = train, meta
    with running_stats_frozen(clone):
        losses = exit_losses(clone(x_tr), y_tr)
        w = weight_net(losses.detach())
        opt.zero_grad()
        ((w * losses).sum(1).mean()).backward()
        opt.step()
        logits = clone(x_me).detach()
    return _official_meta_loss(logits, y_me, q, form)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), K=st.integers(2, 5), p=st.floats(0.2, 1.5), seed=st.integers(0, 99))
def test_meta_objective_is_the_official_sum_over_exits_of_allocated_means(n, K, p, seed):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, K, 6, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 6, (n,), generator=g)
    q = exit_distribution(p, K)
    for form in ("per-exit", "pooled", "last", "all"):
        expected = _official_meta_loss(logits, targets, q, form)
        assert float(meta_objective(logits, targets, q, form)) == pytest.approx(expected, rel=1e-9)
    assert float(meta_objective(logits, targets, q)) == pytest.approx(
        _official_meta_loss(logits, targets, q), rel=1e-9
    )  # the default is the official form


def test_official_meta_loss_weighs_late_exits_by_their_own_mean():
    """With K = 4, p = 0.75 and equal losses at every exit the official objective is K times
    the pooled one: each exit's mean counts once, however few samples reach it."""
    logits = torch.zeros(40, 4, 3, dtype=torch.float64)  # every CE is log 3
    targets = torch.zeros(40, dtype=torch.long)
    q = exit_distribution(0.75, 4)
    assert float(meta_objective(logits, targets, q)) == pytest.approx(4 * math.log(3))
    assert float(meta_objective(logits, targets, q, "pooled")) == pytest.approx(math.log(3))
    with pytest.raises(ValueError, match="meta loss form"):
        meta_objective(logits, targets, q, "mean")


def _setup(seed=0):
    model = tiny_model(seed=seed).train()
    torch.manual_seed(seed + 100)
    weight_net = WeightNet(3, hidden=6, output_init="zero").double()
    for p in weight_net.parameters():  # a non-trivial weight net (not the zero start)
        torch.nn.init.normal_(p, std=0.5)
    optimizer = _optimizer_with_state(model, lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = tiny_batch(16, seed=seed + 7)
    return model, weight_net, optimizer, (x[:8], y[:8]), (x[8:], y[8:]), exit_distribution(0.75, 3)


def test_the_no_allocation_forms_last_scores_exit_k_only_all_scores_every_exit():
    """``last`` (method l2w-last) gives the early exits' logits no meta gradient; ``all``
    (l2w-all, every meta sample at every exit) gives every exit its mean's gradient."""
    logits = torch.randn(12, 4, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 5, (12,))
    q = exit_distribution(0.75, 4)
    (last,) = torch.autograd.grad(meta_objective(logits, targets, q, "last"), logits)
    (every,) = torch.autograd.grad(meta_objective(logits, targets, q, "all"), logits)
    assert torch.all(last[:, :3] == 0) and torch.all(last[:, 3].abs().sum(-1) > 0)
    assert torch.all(every.abs().sum(-1) > 0)
    # d/dlogits of (1/n) CE at each exit: (softmax − onehot) / n, at every exit.
    expected = (torch.softmax(logits, -1) - F.one_hot(targets, 5)[:, None]) / 12
    assert torch.allclose(every, expected.detach(), atol=1e-12)


@pytest.mark.parametrize("form", ["per-exit", "last", "all"])
def test_full_meta_gradient_matches_finite_differences_of_a_real_optimizer_step(form):
    model, weight_net, optimizer, train, meta, q = _setup()
    grads, metrics = meta_gradient(
        model, weight_net, optimizer, train, meta, q, "full", meta_loss=form
    )
    assert metrics["meta_loss"] == pytest.approx(
        _reference_meta_loss(model, weight_net, optimizer, train, meta, q, form), rel=1e-10
    )
    g = torch.Generator().manual_seed(0)
    for param, grad in zip(weight_net.parameters(), grads, strict=True):
        for index in torch.randint(0, param.numel(), (3,), generator=g).tolist():
            eps = 1e-6
            original = param.data.view(-1)[index].item()
            values = []
            for sign in (1, -1):
                param.data.view(-1)[index] = original + sign * eps
                values.append(
                    _reference_meta_loss(model, weight_net, optimizer, train, meta, q, form)
                )
            param.data.view(-1)[index] = original
            numeric = (values[0] - values[1]) / (2 * eps)
            assert grad.view(-1)[index].item() == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_first_order_with_lookahead_equals_full_and_without_it_approximates():
    model, weight_net, optimizer, train, meta, q = _setup(seed=1)
    full, _ = meta_gradient(model, weight_net, optimizer, train, meta, q, "full")
    exact, _ = meta_gradient(model, weight_net, optimizer, train, meta, q, "first_order", True)
    for a, b in zip(full, exact, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-14)
    # Without the lookahead v is taken at θ instead of θ̂: exact as lr → 0.
    for group in optimizer.param_groups:
        group["lr"] = 1e-5
    full, _ = meta_gradient(model, weight_net, optimizer, train, meta, q, "full")
    approx, _ = meta_gradient(model, weight_net, optimizer, train, meta, q, "first_order")
    for a, b in zip(full, approx, strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))


def test_meta_step_leaves_the_model_and_its_bn_buffers_untouched():
    model, weight_net, optimizer, train, meta, q = _setup(seed=2)
    x = torch.cat([train[0], meta[0]])
    y = torch.cat([train[1], meta[1]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    phi = [p.clone() for p in weight_net.parameters()]
    for mode in ("full", "first_order"):
        MetaStep(weight_net, torch.optim.Adam(weight_net.parameters(), 1e-3), 0.75, mode)(
            model, optimizer, (x[:8], y[:8]), (x[8:], y[8:])
        )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(phi, weight_net.parameters(), strict=True))
    # (the buffers are live: the real training step in _setup did move them)
    assert int(model.blocks[0][0][1].running_mean.ne(0).sum()) > 0


def test_weight_net_starts_uniform_is_centred_and_can_clamp():
    net = WeightNet(4, 10, delta=0.8, output_init="zero")
    losses = torch.rand(7, 4) * 3
    assert torch.equal(net(losses), torch.ones(7, 4))
    torch.manual_seed(0)
    official = WeightNet(4, 10, delta=0.8)  # PyTorch's default init, as the official code
    assert not torch.equal(official(losses), torch.ones(7, 4))
    assert torch.allclose(official(losses).mean(1), torch.ones(7))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)
    with torch.no_grad():  # g ≈ (1, 1, 1, −1): exit 4's centred g ≈ −1.5, so w4 ≈ 1 − 0.8·1.5 < 0
        net.net[-1].bias.copy_(torch.tensor([6.0, 6.0, 6.0, -6.0]))
    w = net(losses)
    assert torch.allclose(w.mean(1), torch.ones(7))
    g = torch.tanh(net.net(losses))
    assert torch.allclose(w, 1 + 0.8 * (g - g.mean(1, keepdim=True)))
    assert (w < 0).any()  # unclamped weights can turn negative...
    net.clamp = True
    assert torch.equal(net(losses), w.clamp_min(0))  # ...and the clamp clips them at 0
    with pytest.raises(ValueError, match="losses must be"):
        net(torch.rand(3, 5))


# ---------------------------------------------------------------- MACs, losses, execution


def test_mac_count_matches_a_hand_count():
    model = MultiExitCNN(2, (2, 3), (1, 2), head_width=2, classes=3)
    # step 1 on a 4×4 image: block conv 1→2 (4×4 out) + conv 2→2 (4×4) + head conv 2→2, stride
    # 2 (2×2 out) + linear 2→3; step 2: conv 2→3 stride 2 (2×2) + conv 3→3 (2×2) + head conv
    # 3→2 stride 2 (1×1) + linear 2→3. A conv does out_channels·positions·in_channels·9.
    step1 = 2 * 16 * 1 * 9 + 2 * 16 * 2 * 9 + 2 * 4 * 2 * 9 + 2 * 3
    step2 = 3 * 4 * 2 * 9 + 3 * 4 * 3 * 9 + 2 * 1 * 3 * 9 + 2 * 3
    costs = count_step_macs(model, torch.zeros(1, 4, 4))
    assert costs.tolist() == [step1, step1 + step2]
    signal = MultiExitCNN(1, (2, 4), (1, 2), head_width=3, classes=5)
    # length 10: conv 1→2 (10) + 2→2 (10) + head 2→3 stride 2 (5) + 3→5; conv 2→4 stride 2 (5)
    # + 4→4 (5) + head 4→3 stride 2 (3) + 3→5; a 1-D conv does out·positions·in·3.
    s1 = 2 * 10 * 1 * 3 + 2 * 10 * 2 * 3 + 3 * 5 * 2 * 3 + 15
    s2 = 4 * 5 * 2 * 3 + 4 * 5 * 4 * 3 + 3 * 3 * 4 * 3 + 15
    assert count_step_macs(signal, torch.zeros(1, 10)).tolist() == [s1, s1 + s2]
    with pytest.raises(ValueError, match="batch of one"):
        count_step_macs(model, torch.zeros(2, 4, 4))


def test_policy_mac_count_matches_a_hand_count():
    """An exit policy with hidden widths (5, 2) asked at each of 4 exits: linear (3 features + 4
    one-hot) → 5, 5 → 2, 2 → 1 per exit, cumulative."""
    per_exit = (3 + 4) * 5 + 5 * 2 + 2 * 1
    costs = count_policy_macs(ExitPolicy(4, hidden=(5, 2)), exits=4, classes=10)
    assert costs.tolist() == [per_exit * k for k in range(1, 5)]


def test_exit_losses_match_a_loop_and_bad_shapes_are_named():
    logits, y = torch.randn(5, 3, 4), torch.randint(0, 4, (5,))
    expected = torch.tensor(
        [
            [float(F.cross_entropy(logits[i, k][None], y[i][None])) for k in range(3)]
            for i in range(5)
        ]
    )
    assert torch.allclose(exit_losses(logits, y), expected, atol=1e-6)
    with pytest.raises(ValueError, match=r"logits \(B, K, C\)"):
        exit_losses(torch.randn(5, 4), y)
    with pytest.raises(ValueError, match="expected inputs of shape"):
        MultiExitCNN(2, (2, 2), (1, 1)).start(torch.zeros(2, 3, 4, 4))


def test_shrink_equals_dense_and_the_vectorised_evaluation():
    model = tiny_model(torch.float32).eval()
    model.set_step_costs(count_step_macs(model, torch.zeros(1, 1, 6, 6)))
    val_x, _ = tiny_batch(200, seed=11, dtype=torch.float32)
    test_x, _ = tiny_batch(300, seed=12, dtype=torch.float32)
    val_logits, test_logits = exit_logits(model, val_x), exit_logits(model, test_x, chunk=70)
    val_scores = exit_hazards(ConfidencePolicy(), val_logits)
    rule = ScoreThreshold(fit_exit_thresholds(val_scores, exit_distribution(1.0, 3)))
    with torch.no_grad():
        shrink = run_adaptive(model, ConfidencePolicy(), test_x, rule, mode="shrink")
        dense = run_adaptive(model, ConfidencePolicy(), test_x, rule, mode="dense")
        masked = run_adaptive(model, ConfidencePolicy(), test_x, rule, mode="masked")
    vectorised = stop_indices(exit_hazards(ConfidencePolicy(), test_logits), rule)
    assert 0 < int((shrink.stop_index == 0).sum()) < 300  # some rows really leave early
    for other in (dense, masked):  # masked: the feature maps change shape from step to step
        assert torch.equal(shrink.stop_index, other.stop_index)
        assert torch.allclose(shrink.predictions, other.predictions, atol=1e-5)
    assert torch.equal(shrink.stop_index, vectorised)
    timing = time_early_exit(model, test_x, {"p=1": rule}, batch=100, repeats=1)
    row = timing["rules"]["p=1"]
    assert row["mean_cost"] == pytest.approx(float(model.step_costs()[vectorised].mean()))
    assert row["mac_ratio"] > 1 and row["speedup_over_mac_ratio"] > 0
    assert 0.99 <= row["same_exits"] <= 1.0  # a share of the 300 rows, not a count
    layout = timing["layout"]  # the copy timed: the fastest of its candidates here
    switch = layout["channels_last_from"]
    assert min(layout["seconds"], key=layout["seconds"].get) == str(switch).lower()  # or "none"


# ---------------------------------------------------------------- choices on validation


def test_beta_is_chosen_per_budget_on_validation_not_on_test():
    """Two candidate curves whose validation and test rankings disagree: the choice follows
    validation at each budget, and reports the chosen curve's test accuracy there."""

    def curve(val_acc, test_acc):
        return [
            {"val_mean_cost": c, "val_accuracy": v, "mean_cost": c, "accuracy": t}
            for c, v, t in zip([1.0, 2.0, 3.0], val_acc, test_acc, strict=True)
        ]

    curves = {
        "a": curve([0.6, 0.7, 0.8], [0.5, 0.9, 0.5]),  # best on validation at low cost
        "b": curve([0.5, 0.75, 0.7], [0.9, 0.1, 0.9]),  # best on validation at cost 2
        "short": curve([0.99] * 3, [0.99] * 3)[:1],  # reaches only cost 1
    }
    picks = choose_on_validation(curves, [1.0, 1.5, 2.0, 3.0, 4.0])
    assert [p["choice"] for p in picks] == ["short", "a", "b", "a", None]
    assert [p["accuracy"] for p in picks[:4]] == pytest.approx([0.99, 0.7, 0.1, 0.5])
    assert picks[1]["val_accuracy"] == pytest.approx(0.65)


def test_where_a_test_curve_falls_short_the_choice_is_still_validations():
    """A candidate's test costs play no part in choosing it: the best on validation is chosen
    even where its test curve does not reach the budget (its test accuracy there is None)."""
    best = [{"val_mean_cost": c, "val_accuracy": 0.9, "mean_cost": c + 0.5, "accuracy": 0.8}
            for c in (1.0, 2.0)]  # fmt: skip
    other = [{"val_mean_cost": c, "val_accuracy": 0.5, "mean_cost": c, "accuracy": 0.6}
             for c in (1.0, 2.0)]  # fmt: skip
    picks = choose_on_validation({"best": best, "other": other}, [1.0, 2.0])
    assert [p["choice"] for p in picks] == ["best", "best"]
    assert picks[0]["accuracy"] is None and picks[1]["accuracy"] == pytest.approx(0.8)


def test_validation_accuracy_of_a_mixed_point_follows_its_mix():
    """A budget point that shares its rows between two rules is scored on validation with both
    (written out: rows at positions i with frac((i + 1)·0.618…) < share take the first)."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 4, generator=g, dtype=torch.float64)
    correct = torch.rand(200, 4, generator=g) < 0.6
    point = {
        "score_threshold": [0.5, 0.5, 0.5, -math.inf],
        "mix": {"score_threshold": [math.inf, math.inf, -math.inf, -math.inf], "share": 0.3},
    }
    with_validation_accuracy([point], scores, correct)
    golden = (math.sqrt(5) - 1) / 2
    right = 0
    for i in range(200):
        first = ((i + 1) * golden) % 1.0 < 0.3
        thresholds = point["score_threshold"] if first else point["mix"]["score_threshold"]
        exit_ = next(k for k in range(4) if scores[i, k] >= thresholds[k])
        right += bool(correct[i, exit_])
    assert point["val_accuracy"] == pytest.approx(right / 200)


def test_a_stop_heads_cost_is_charged_at_every_exit_but_the_last():
    """The head is asked at exits 1..K−1 (at the last every row stops): exit k costs the
    network's k blocks and heads plus min(k, K − 1) calls of the head, counted one call alone."""
    model = tiny_model(torch.float32)
    model.set_step_costs(count_step_macs(model, torch.zeros(1, 1, 6, 6)))
    head = ExitPolicy(model.max_steps)
    one_call = float(count_policy_macs(head, 1, model.classes)[0])
    K = model.max_steps
    expected = [
        float(model.step_costs()[k - 1]) + min(k, K - 1) * one_call for k in range(1, K + 1)
    ]
    assert head_costs(model, head).tolist() == pytest.approx(expected)


def test_meta_learning_rate_follows_the_official_cosine_to_zero():
    assert meta_lr_at(0, 100, 1e-4, "cosine") == pytest.approx(1e-4)
    assert meta_lr_at(50, 100, 1e-4, "cosine") == pytest.approx(5e-5)
    # a quarter of the way: ½(1 + cos(π/4))·1e-4 ≈ 8.536e-5 (linear decay would give 7.5e-5)
    assert meta_lr_at(25, 100, 1e-4, "cosine") == pytest.approx(0.5 * (1 + 2**-0.5) * 1e-4)
    assert meta_lr_at(75, 100, 1e-4, "cosine") == pytest.approx(0.5 * (1 - 2**-0.5) * 1e-4)
    assert meta_lr_at(100, 100, 1e-4, "cosine") == pytest.approx(0, abs=1e-20)
    for step in (0, 37, 100):
        assert meta_lr_at(step, 100, 1e-4, "constant") == 1e-4


# ---------------------------------------------------------------- the inference copy


def _trained_looking(dims, stem, seed=0):
    """A model whose BatchNorms have non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    model = MultiExitCNN(dims, (5, 6, 7), (1, 2, 2), head_width=4, classes=3, stem=stem).double()
    for m in model.modules():
        if isinstance(m, BatchNorm):
            for t in (m.weight, m.bias, m.running_mean):
                torch.nn.init.normal_(t.data)
            m.running_var.data.uniform_(0.2, 3.0)
    return model.eval()


@pytest.mark.parametrize(
    "dims, stem, shape",
    [(2, 1, (9, 1, 8, 8)), (2, 2, (9, 8, 8)), (2, 4, (9, 1, 16, 16)), (1, 1, (9, 12)),
     (1, 3, (9, 1, 24))],
)  # fmt: skip
@pytest.mark.parametrize("channels_last_from", [None, 0, 1])
def test_inference_copy_computes_the_same_function_with_the_same_macs(
    dims, stem, shape, channels_last_from
):
    model = _trained_looking(dims, stem)
    x = torch.randn(*shape, dtype=torch.float64)
    model.set_step_costs(count_step_macs(model, x[:1]))
    fast = inference_copy(model, channels_last_from=channels_last_from)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-10)
    assert fast.stem == 1 and not any(isinstance(m, BatchNorm) for m in fast.modules())
    # From channels_last_from on, the maps are channels-last (a signal's as a height-one image),
    # and before it they keep their own layout.
    state = fast.start(x)
    for t in range(fast.max_steps):
        state = fast.advance(state, t)
        later = channels_last_from is not None and t >= channels_last_from
        convs = [m for m in (fast.blocks[t], fast.heads[t]) for m in m.modules()]
        assert any(isinstance(m, torch.nn.Conv1d) for m in convs) == (dims == 1 and not later)
        assert state["h"].dim() == (4 if dims == 2 or later else 3)
        if later:
            assert state["h"].is_contiguous(memory_format=torch.channels_last)
    assert count_step_macs(fast, x[:1]).tolist() == model.step_costs().tolist()
    assert torch.equal(fast.step_costs(), model.step_costs())
    for m in model.modules():  # the original is untouched
        if isinstance(m, torch.nn.modules.conv._ConvNd):
            assert m.bias is None


@pytest.mark.parametrize("dims, shape", [(2, (6, 1, 8, 8)), (1, (6, 12))])
def test_fastest_inference_copy_takes_the_switch_that_ran_fastest(dims, shape, monkeypatch):
    """Every candidate but the one channels-last from step 2 is made 50 ms slower: that one is
    chosen, and it computes the model's function."""
    model = _trained_looking(dims, 1)
    x = torch.randn(*shape, dtype=torch.float64)
    model.set_step_costs(count_step_macs(model, x[:1]))
    forward = MultiExitCNN.forward

    def slowed(self, inputs):
        if self.channels_last_from != 1:
            time.sleep(0.05)
        return forward(self, inputs)

    monkeypatch.setattr(MultiExitCNN, "forward", slowed)
    fast = fastest_inference_copy(model, x, repeats=3)  # a median robust to one stall
    assert fast.channels_last_from == 1
    assert set(fast.layout_seconds) == {"none", "0", "1", "2"}
    assert min(fast.layout_seconds, key=fast.layout_seconds.get) == "1"
    monkeypatch.setattr(MultiExitCNN, "forward", forward)
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), atol=1e-10)


@pytest.mark.parametrize("stride, padding, bias", [(1, 1, True), (2, 2, False), (3, 0, True)])
def test_signal_tap_convolution_is_conv1d_on_the_signal(stride, padding, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 5, (1, 6), stride=(1, stride), padding=(0, padding), bias=bias)
    tap = SignalTapConv.of(conv.double())
    x = torch.randn(7, 1, 23, dtype=torch.float64)
    expected = F.conv1d(x, conv.weight[:, :, 0], conv.bias, stride=stride, padding=padding)
    out = tap(x.unsqueeze(2))
    assert out.shape == (7, 5, 1, expected.shape[-1])
    assert torch.allclose(out[:, :, 0], expected, atol=1e-12)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert count_macs(tap, x.unsqueeze(2)) == count_macs(conv.double(), x.unsqueeze(2))
    with pytest.raises(ValueError, match="one channel"):
        SignalTapConv.of(torch.nn.Conv2d(2, 5, (1, 3)))
    with pytest.raises(ValueError, match="stride"):
        SignalTapConv.of(torch.nn.Conv2d(1, 5, (1, 3), padding=(1, 1)))


def test_folded_stem_is_the_unshuffled_convolution_written_out():
    """fold_stem's weight against the definition: pixel_unshuffle, then the 3×3 convolution."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2 * 9, 5, 3, stride=2, padding=1, bias=False).double()
    model = MultiExitCNN(2, (5, 6), (2, 1), head_width=4, classes=3, in_channels=2, stem=3)
    model = model.double().eval()
    model.blocks[0][0][0] = conv
    x = torch.randn(4, 2, 12, 12, dtype=torch.float64)
    expected = F.conv2d(F.pixel_unshuffle(x, 3), conv.weight, stride=2, padding=1)
    folded = fold_stem(model).blocks[0][0][0]
    assert folded.kernel_size == (9, 9) and folded.stride == (6, 6) and folded.padding == (3, 3)
    assert torch.allclose(folded(x), expected, atol=1e-12)


def test_folded_batchnorm_matches_batch_norm_in_eval_mode():
    model = _trained_looking(2, 1)
    block = copy.deepcopy(model.blocks[0][0])  # conv, BN, ReLU
    x = torch.randn(6, 1, 5, 5, dtype=torch.float64)
    conv, norm = block[0], block[1]
    expected = torch.relu(
        (conv(x) - norm.running_mean.view(1, -1, 1, 1))
        / torch.sqrt(norm.running_var.view(1, -1, 1, 1) + norm.eps)
        * norm.weight.view(1, -1, 1, 1)
        + norm.bias.view(1, -1, 1, 1)
    )
    fold_batchnorm(block)
    assert isinstance(block[1], torch.nn.Identity)
    assert torch.allclose(block(x), expected, atol=1e-12)


def test_early_exit_on_the_inference_copy_takes_the_same_exits():
    model = _trained_looking(2, 2).float()
    x = torch.randn(300, 8, 8)
    model.set_step_costs(count_step_macs(model, x[:1]))
    scores = exit_hazards(ConfidencePolicy(), exit_logits(model, x))
    rule = ScoreThreshold(fit_exit_thresholds(scores, exit_distribution(0.5, 3)))
    fast = inference_copy(model)
    with torch.no_grad():
        a = run_adaptive(model, ConfidencePolicy(), x, rule, mode="shrink")
        b = run_adaptive(fast, ConfidencePolicy(), x, rule, mode="shrink")
    assert (a.stop_index == b.stop_index).double().mean() > 0.99
    assert torch.equal(a.cost[a.stop_index == b.stop_index], b.cost[a.stop_index == b.stop_index])


def test_test_curve_uses_the_validation_thresholds_unrounded():
    # 0.1 has no float32 value: rounded to float32 it is 0.1000000015, above a score of 0.1, so a
    # rounded threshold would send this row on to exit 2 where validation stopped it at exit 1
    fitted = [{"p": 1.0, "score_threshold": [0.1, 0.0], "val_mean_cost": 1.0}]
    scores = torch.tensor([[0.1, 5.0]], dtype=torch.float64)
    costs = torch.tensor([1.0, 2.0], dtype=torch.float64)
    (point,) = apply_thresholds(fitted, scores, lambda index: {}, costs)
    assert point["mean_steps"] == 1.0 and point["mean_cost"] == 1.0


def test_weights_figure_title_counts_the_samples_it_plots():
    from stopwise.tasks.multi_exit.report import _weights_figure

    data = {"losses": [[0.1, 0.2, 0.3]] * 2, "weights": [[1.0, 0.5, 0.0]] * 2}
    assert "(3 training samples)" in _weights_figure("l2w", data)._suptitle.get_text()


def test_a_budget_no_candidate_reached_reads_as_a_dash_not_as_uniform_training():
    from stopwise.tasks.multi_exit.report import _beta_text

    assert _beta_text(None, None) == "—"  # nothing chosen (the record's beta is None too)
    assert _beta_text(None, "uniform") == "∞"  # uniform training: β → ∞
    assert _beta_text(4.0, "l2s-b4") == "4"


def test_adding_a_beta_or_a_timed_method_changes_no_other_jobs_settings():
    from stopwise.experiments import get_experiment, plan_jobs, resolve_config

    experiment = get_experiment("multi-exit")

    def settings(overrides):
        config = resolve_config(experiment, "tiny", ["methods=uniform,l2w,l2s", *overrides])[0]
        return {p.id: p.settings for p in plan_jobs(experiment, config)}

    base = settings(["l2s.betas=1", "timing.methods=l2w"])
    wider = settings(["l2s.betas=1,4", "timing.methods=l2w,uniform"])
    changed = sorted(j for j in base if base[j] != wider[j])
    assert changed == ["l2s-s0", "uniform-s0"]  # the β selection and the newly timed job
    assert {"l2s-b4-s0", "l2s-b4-train-s0"} <= set(wider) - set(base)
    other = settings(["l2s.betas=1", "timing.methods=l2w", "l2s.policy_lr=0.01"])
    changed = sorted(j for j in base if base[j] != other[j])
    assert changed == ["l2s-b1-s0", "l2s-b1-train-s0", "l2s-s0"]  # its evaluation and choice too


@pytest.mark.parametrize(
    "override, trains",
    [
        ("budgets=0.4,0.6", False),
        ("inference_mode=dense", False),
        ("eval_batch=7", False),
        ("gain_head=false", False),
        ("gain_updates=3", False),
        ("gain_price=0.5", False),
        ("timing.repeats=2", False),
        ("epochs=2", True),
        ("lr=0.1", True),
        ("channels=4,8,16", True),
    ],
)
def test_an_evaluation_key_changes_no_training_jobs_settings(override, trains):
    """A training job's settings hold only what training reads; its evaluation's hold those
    too (its dependency's digest), so a training key changes both and an evaluation key
    (budgets, inference mode, gain head, timing) the evaluations alone."""
    from stopwise.experiments import get_experiment, plan_jobs, resolve_config

    experiment = get_experiment("multi-exit")

    def settings(overrides):
        config = resolve_config(experiment, "tiny", ["methods=uniform,l2w,l2s", *overrides])[0]
        return {p.id: p.settings for p in plan_jobs(experiment, config)}

    base, other = settings([]), settings([override])
    changed = {id for id in base if base[id] != other[id]}
    training = {id for id in base if id.endswith("-train-s0")}
    assert training == {"uniform-train-s0", "l2w-train-s0", "l2s-b1-train-s0"}
    if trains:
        assert changed == set(base)  # every training job, and every job after one
    else:
        assert changed and not changed & training


def test_reach_text_gives_the_costs_the_curves_span_as_shares_of_full_macs():
    from stopwise.tasks.multi_exit.report import _reach_text

    results = {
        "step_costs": [10.0, 40.0, 100.0],
        "lines": [
            {"curve_mean": [{"mean_cost": 43.0}, {"mean_cost": 86.0}]},
            {"curve_mean": [{"mean_cost": 50.0}, {"mean_cost": 88.0}]},
        ],
    }
    assert _reach_text(results) == "43%–88%"


def test_accuracy_by_group_by_hand():
    """Per difficulty group: the mean 1-based exit and the accuracy at each row's own exit."""
    index = torch.tensor([0, 2, 1, 2])
    correct = torch.tensor(
        [[True, False, False], [False, False, True], [True, False, True], [True, True, False]]
    )
    group = torch.tensor([0, 1, 0, 1])
    rows = accuracy_by_group(index, correct, group, [0.0, 0.5])
    assert rows == [
        {"group": 0, "level": 0.0, "mean_exit": 1.5, "accuracy": 0.5},  # exits 1, 2; right, wrong
        {"group": 1, "level": 0.5, "mean_exit": 3.0, "accuracy": 0.5},  # exits 3, 3; right, wrong
    ]


def test_accuracy_by_group_by_hand_with_groups_of_different_accuracy():
    """Each group's accuracy counts its own rows only: here 1 of 1 and 1 of 3."""
    index = torch.tensor([1, 0, 0, 1])
    correct = torch.tensor([[False, True], [True, False], [False, True], [True, False]])
    group = torch.tensor([0, 1, 1, 1])
    rows = accuracy_by_group(index, correct, group, [0.0, 0.5])
    # group 0: right; group 1: right, wrong, wrong
    assert [r["accuracy"] for r in rows] == pytest.approx([1.0, 1 / 3])
    assert [r["mean_exit"] for r in rows] == pytest.approx([2.0, 4 / 3])


def test_msdnet_rule_takes_the_point_nearest_to_the_value():
    """The nearest point wins, whether it lies above or below the value."""
    fitted = [
        {"p": 0.5, "score_threshold": [1.0], "val_mean_cost": 10.0},
        {"p": 1.0, "score_threshold": [2.0], "val_mean_cost": 20.0},
        {"p": 1.5, "score_threshold": [3.0], "val_mean_cost": 30.0},
    ]
    # distances to 29: 19, 9, 1 → the cost-30 point; to 21: 11, 1, 9 → the cost-20 point
    assert msdnet_rule(fitted, "val_mean_cost", 29.0).score_threshold.tolist() == [3.0]
    assert msdnet_rule(fitted, "val_mean_cost", 21.0).score_threshold.tolist() == [2.0]
    assert msdnet_rule(fitted, "p", 0.6).score_threshold.tolist() == [1.0]


def test_a_paired_cell_reached_by_fewer_seeds_than_the_run_has_says_how_many():
    """The paired table's header says "mean over 3 seeds"; a gain-head cell paired over the 2
    seeds that reach its budget printed a wide interval with no sign of it."""
    from stopwise.stats import paired_difference
    from stopwise.tasks.multi_exit.report import _interval_text

    two = paired_difference({0: 0.50, 1: 0.52}, {0: 0.49, 1: 0.50})  # +1 and +2 points
    assert _interval_text(two, seeds=3).endswith("] (n = 2)")
    assert _interval_text(two, seeds=2).startswith("+1.50 [") and "(n =" not in _interval_text(
        two, 2
    )
    assert _interval_text(paired_difference({0: 0.5}, {0: 0.4}), seeds=3) == "+10.00 (n = 1)"
