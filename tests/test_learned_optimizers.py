"""The learned-optimizers task against independent references: the paper's preprocessing written
out as a branch, torch.optim's optimizers, closed-form gradients and optima, an nn.Sequential
MLP, per-coordinate loops, the random-horizon prior, a plain truncated-BPTT graph for the ACT
optimizer's gradient, and real adaptive execution counting gradient evaluations."""

import copy
import math
import re
from fractions import Fraction

import pytest
import torch
from torch import nn

from stopwise.inference import ScoreThreshold, run_adaptive, stop_indices
from stopwise.objectives import random_horizon_bound
from stopwise.steps import unroll
from stopwise.stoptime import random_horizon_log_conditional
from stopwise.tasks.learned_optimizers import (
    HandDesigned,
    LearnedOptimizer,
    LSTMOptimizerNet,
    MLPFamily,
    OptimizerRun,
    QuadraticFamily,
    RegressionFamily,
    log_and_sign,
    loss_and_gradient,
    loss_curves,
    meta_train,
    meta_train_act,
    meta_train_restarts,
)
from stopwise.tasks.learned_optimizers.data import suboptimality
from stopwise.tasks.learned_optimizers.experiment import (
    _posterior_rules,
    _tolerance_threshold,
    validation_score,
)
from stopwise.tasks.learned_optimizers.methods import (
    CHUNK_COORDINATES,
    HAND_CHUNK,
    _default_chunk,
    _windows,
    act_meta_gradient,
    nll_scale,
    step_penalised,
    trained_weights,
    tune_learning_rates,
)
from stopwise.tasks.learned_optimizers.metrics import (
    StopData,
    StopEvaluation,
    evaluate_stop,
    fixed_depth_tradeoff,
    log10_gap,
    oracle_tradeoff,
)
from stopwise.tasks.learned_optimizers.models import FeatureScore, StackedLSTMOptimizers
from stopwise.training import GeneratedBatches, LoopSettings


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- preprocessing


def test_log_and_sign_is_the_papers_branch_and_deepminds_clamps():
    p = 10.0
    g = torch.cat([torch.logspace(-9, 2, 40), -torch.logspace(-9, 2, 40), torch.zeros(1)])
    out = log_and_sign(g, p)
    for value, (a, b) in zip(g.tolist(), out.tolist(), strict=True):  # App. A, as printed
        if abs(value) >= math.exp(-p):
            expected = (math.log(abs(value)) / p, math.copysign(1.0, value))
        else:
            expected = (-1.0, math.exp(p) * value)
        assert a == pytest.approx(expected[0], abs=1e-6)
        assert b == pytest.approx(expected[1], abs=1e-6)
    # deepmind/learning-to-learn preprocess.LogAndSign: clamps instead of the branch
    clamped = torch.stack(
        [(torch.log(g.abs() + 1e-12) / p).clamp_min(-1), (g * math.exp(p)).clamp(-1, 1)], -1
    )
    assert torch.allclose(out, clamped, atol=1e-5)


# ---------------------------------------------------------------- families


def test_regression_loss_gradient_and_optimum_are_the_closed_forms():
    family = RegressionFamily()
    functions = family.sample(64, gen())
    theta = torch.randn(64, 2, dtype=torch.float64, generator=gen(1))
    loss, grad = loss_and_gradient(family, theta, functions, 0)
    x, y, mask, beta, N = (functions[k] for k in ("x", "y", "mask", "beta", "count"))
    residual = (y - theta[:, :1] - theta[:, 1:] * x) * mask
    expected = 0.5 * torch.log(2 * math.pi / beta) + 0.5 * beta * (residual**2).sum(-1) / N
    assert torch.allclose(loss, expected)
    d0 = -beta * residual.sum(-1) / N
    d1 = -beta * (residual * x).sum(-1) / N
    assert torch.allclose(grad, torch.stack([d0, d1], -1))
    # N·f is the negative log-likelihood of the N observations
    assert torch.allclose(nll_scale(family, functions), N)
    # the least-squares optimum, against numpy's lstsq on each function's own observations
    import numpy as np

    theta_hat = family.minimiser(functions)
    for i in range(5):
        n = int(N[i])
        phi = np.stack([np.ones(n), x[i, :n].numpy()], 1)
        solution = np.linalg.lstsq(phi, y[i, :n].numpy(), rcond=None)[0]
        assert np.allclose(theta_hat[i].numpy(), solution)
    _, at_optimum = loss_and_gradient(family, theta_hat, functions, 0)
    assert at_optimum.abs().max() < 1e-8
    assert bool((family.full_loss(theta, functions) >= family.optimum(functions)).all())


def _exact_regression_gap(functions, i: int, theta) -> Fraction:
    """f(θ) − f(θ̂) of function ``i`` in exact rational arithmetic from its float64 data: θ̂
    from the normal equations solved by Cramer's rule, f written out as the thesis's NLL (the
    log term cancels in the difference)."""
    n = int(functions["count"][i])
    xs = [Fraction(v) for v in functions["x"][i, :n].tolist()]
    ys = [Fraction(v) for v in functions["y"][i, :n].tolist()]
    beta = Fraction(float(functions["beta"][i]))
    sx, sxx = sum(xs), sum(x * x for x in xs)
    sy, sxy = sum(ys), sum(x * y for x, y in zip(xs, ys, strict=True))
    det = n * sxx - sx * sx
    hat = ((sxx * sy - sx * sxy) / det, (n * sxy - sx * sy) / det)

    def f(t0, t1):  # without the constant ½ log(2π/β)
        return beta / (2 * n) * sum((y - t0 - t1 * x) ** 2 for x, y in zip(xs, ys, strict=True))

    return f(*(Fraction(v) for v in theta)) - f(*hat)


def test_regression_gap_is_exact_where_the_difference_of_losses_is_rounding():
    """The regression family's ``gap`` against f(θ) − f(θ̂) in exact rational arithmetic, at
    points 1e-3 … 1e-11 from θ̂: the quadratic form keeps ~12 digits where subtracting the two
    float64 losses is rounding noise (the reason for ``gap``); ``suboptimality`` uses it."""
    family = RegressionFamily()
    functions = family.sample(4, gen(5))
    theta_hat = family.minimiser(functions)
    direction = torch.randn(4, 2, dtype=torch.float64, generator=gen(6))
    for distance in (1e-3, 1e-7, 1e-11):
        theta = theta_hat + distance * direction
        gap = family.gap(theta, functions)
        assert torch.equal(suboptimality(family, theta, functions), gap)
        difference = family.loss(theta, functions) - family.optimum(functions)
        for i in range(4):
            exact = float(_exact_regression_gap(functions, i, theta[i].tolist()))
            assert gap[i].item() == pytest.approx(exact, rel=1e-6)
            if distance == 1e-11:  # ~1e-22: far below float64's resolution of f (~1e-16)
                assert abs(difference[i].item() - exact) > 0.5 * exact


@pytest.mark.parametrize("family", [RegressionFamily(), QuadraticFamily(10)], ids=type)
def test_closed_form_gradients_equal_autograd_of_the_loss(family):
    """The families' ``loss_and_gradient`` (used for every optimizer step) against autograd of
    their ``loss``, on random points and functions with masked observations."""
    functions = family.sample(40, gen(2))
    theta = torch.randn(40, family.dim, dtype=torch.float64, generator=gen(3))
    loss, grad = family.loss_and_gradient(theta, functions, 0)
    point = theta.clone().requires_grad_(True)
    (autograd,) = torch.autograd.grad(family.loss(point, functions, 0).sum(), point)
    torch.testing.assert_close(loss, family.loss(theta, functions, 0), rtol=0, atol=0)
    torch.testing.assert_close(grad, autograd, rtol=1e-12, atol=1e-12)
    assert grad.abs().max() > 1e-3  # not at an optimum


def test_regression_difficulty_varies_with_the_input_range():
    family = RegressionFamily(scale_min=0.1, scale_max=2.0)
    functions = family.sample(500, gen())
    difficulty = family.difficulty(functions)
    from stopwise.stats import spearman

    assert spearman(functions["scale"], difficulty["condition_number"]) < -0.8
    assert difficulty["condition_number"].min() >= 1


def test_quadratic_optimum_is_zero_at_the_least_squares_solution():
    family = QuadraticFamily(10)
    functions = family.sample(8, gen())
    solution = torch.linalg.solve(functions["W"], functions["y"].unsqueeze(-1)).squeeze(-1)
    assert family.loss(solution, functions).abs().max() < 1e-16 * 1e6
    assert torch.equal(family.optimum(functions), torch.zeros(8, dtype=torch.float64))


def test_mlp_family_is_an_nn_sequential_with_the_same_weights():
    images = {
        "x_train": torch.randn(50, 6, generator=gen()),
        "y_train": torch.randint(3, (50,), generator=gen()),
        "x_test": torch.randn(20, 6, generator=gen(1)),
        "y_test": torch.randint(3, (20,), generator=gen(1)),
    }
    for hidden, activation, act in (((4,), "sigmoid", nn.Sigmoid), ((4, 5), "relu", nn.ReLU)):
        family = MLPFamily(images, hidden, activation, batch=7, steps=3, init_std=0.5)
        functions = family.sample(2, gen())
        theta = family.initial(functions)
        layers, offset, widths = [], 0, [6, *hidden, 3]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            linear = nn.Linear(a, b).double()
            with torch.no_grad():
                linear.weight.copy_(theta[1, offset : offset + a * b].view(a, b).T)
                linear.bias.copy_(theta[1, offset + a * b : offset + a * b + b])
            offset += a * b + b
            layers += [linear] + ([act()] if i < len(hidden) else [])
        network = nn.Sequential(*layers)
        assert offset == family.dim
        rows = functions["batches"][1, 2]
        expected = nn.functional.cross_entropy(
            network(images["x_train"][rows].double()), images["y_train"][rows]
        )
        assert family.loss(theta, functions, 2)[1].item() == pytest.approx(expected.item(), 1e-5)
        accuracy = (network(images["x_test"].double()).argmax(-1) == images["y_test"]).double()
        assert family.accuracy(theta)[1].item() == pytest.approx(accuracy.mean().item())


# ---------------------------------------------------------------- optimizers


@pytest.mark.parametrize(
    "kind, reference",
    [
        ("sgd", lambda p, lr: torch.optim.SGD(p, lr=lr)),
        ("momentum", lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9)),
        ("rmsprop", lambda p, lr: torch.optim.RMSprop(p, lr=lr)),
        ("adam", lambda p, lr: torch.optim.Adam(p, lr=lr)),
    ],
)
def test_hand_designed_optimizers_follow_torch_optim(kind, reference):
    family = RegressionFamily()
    functions = family.sample(3, gen())
    lrs = torch.tensor([0.01, 0.03, 0.1], dtype=torch.float64)
    trajectory = unroll(OptimizerRun(family, HandDesigned(kind, lrs), 15), functions)
    for i in range(3):
        theta = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        one = {k: v[i : i + 1] for k, v in functions.items()}
        optimizer = reference([theta], float(lrs[i]))
        for t in range(15):
            optimizer.zero_grad()
            family.loss(theta, one).sum().backward()
            optimizer.step()
            assert torch.allclose(theta.detach()[0], trajectory.predictions[i, t], atol=1e-6)


def test_hand_designed_learning_rates_keep_float64_precision():
    """The grid's rate 10^-3.5 is applied as given to float64 functions (it was rounded to
    float32 first, a relative error of 3e-9 in every step). Reference: SGD written out with the
    regression gradient −(β/N) Σ_n r_n [1, x_n]."""
    family = RegressionFamily()
    functions = family.sample(2, gen())
    lr = 10**-3.5
    trajectory = unroll(OptimizerRun(family, HandDesigned("sgd", [lr, lr]), 50), functions)
    for i in range(2):
        x, y = functions["x"][i].tolist(), functions["y"][i].tolist()
        n, beta = int(functions["count"][i]), float(functions["beta"][i])
        a = b = 0.0
        for t in range(50):
            r = [y[k] - a - b * x[k] for k in range(n)]
            ga = -beta / n * sum(r)
            gb = -beta / n * sum(r[k] * x[k] for k in range(n))
            a, b = a - lr * ga, b - lr * gb
            got = trajectory.predictions[i, t].tolist()
            assert got[0] == pytest.approx(a, rel=1e-13, abs=1e-300)
            assert got[1] == pytest.approx(b, rel=1e-13, abs=1e-300)


def test_the_lstm_is_coordinatewise():
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    grads = torch.randn(3, 5) * torch.logspace(-6, 1, 5)
    state = net.initial_state(3, 5)
    update, _, new_state = net(grads, state)
    for i in range(3):
        for d in range(5):
            single, _, single_state = net(grads[i : i + 1, d : d + 1], net.initial_state(1, 1))
            assert torch.allclose(update[i, d], single[0, 0], atol=1e-7)
            assert torch.allclose(new_state[0][i, d], single_state[0][0, 0], atol=1e-7)


def test_learned_optimizer_is_a_torch_optimizer_stepping_like_the_net():
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.1)
    model = nn.Linear(3, 2)
    flat = torch.cat([model.weight.detach().flatten(), model.bias.detach()]).unsqueeze(0)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    optimizer = LearnedOptimizer(model.parameters(), net)
    assert isinstance(optimizer, torch.optim.Optimizer)
    state = net.initial_state(1, 8)

    def loss_of(theta):
        return ((x @ theta[:6].view(2, 3).T + theta[6:] - y) ** 2).mean()

    for _ in range(5):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        optimizer.step()
        grad = torch.func.grad(loss_of)(flat[0])
        with torch.no_grad():
            update, _, state = net(grad.unsqueeze(0), state)
        flat = flat + update
    assert torch.allclose(model.weight.detach().flatten(), flat[0, :6], atol=1e-6)
    assert torch.allclose(model.bias.detach(), flat[0, 6:], atol=1e-6)


@pytest.mark.parametrize("join_below", [1, 10, 10**9], ids=["alone", "some-joined", "all-joined"])
@pytest.mark.parametrize("update", ["additive", "scaled_rmsprop"])
def test_learned_optimizer_steps_each_tensor_as_the_net_alone_would(
    update, join_below, monkeypatch
):
    """Small tensors share one call of the net (two groups of different lr, a tensor without a
    gradient, a halting head), against a reference that runs the net on each tensor by itself:
    the same steps, and each tensor's halting score pooled over its own coordinates."""
    monkeypatch.setattr(LearnedOptimizer, "JOIN_BELOW", join_below)
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.1, halting=True, update=update)
    nn.init.normal_(net.halting.weight)  # the head starts at zero: make its input matter
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2), nn.Linear(2, 2))
    frozen = model[3].weight
    frozen.requires_grad_(False)
    groups = [
        {"params": [*model[0].parameters()], "lr": 1.0},
        {"params": [*model[2].parameters(), *model[3].parameters()], "lr": 0.3},
    ]
    optimizer = LearnedOptimizer(groups, net)
    reference = {id(p): p.detach().clone() for p in model.parameters()}
    states: dict[int, tuple] = {}
    lrs = {id(p): group["lr"] for group in groups for p in group["params"]}
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    for _ in range(4):
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
        optimizer.step()
        for p in model.parameters():
            if id(p) not in grads:
                assert torch.equal(p, reference[id(p)]) and p not in optimizer.state
                continue
            g = grads[id(p)].reshape(1, -1)
            state = states.get(id(p), net.initial_state(1, g.shape[1]))
            with torch.no_grad():
                delta, halting, states[id(p)] = net(g, state)
            reference[id(p)] += lrs[id(p)] * delta.view_as(p)
            assert torch.allclose(p, reference[id(p)], atol=1e-6)
            assert optimizer.last_halting_score[p] == pytest.approx(-float(halting), abs=1e-6)
    assert frozen not in optimizer.last_halting_score


def test_a_scheduler_scales_the_learned_update():
    """``lr`` multiplies the net's update; torch's schedulers change it between steps (they
    failed with a KeyError on a param group without ``lr``)."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.1)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    optimizer = LearnedOptimizer(model.parameters(), net, lr=0.5)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    state = net.initial_state(1, 3)
    for lr in (0.5, 0.05, 0.005):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(lr)
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        before, grad = model.weight.detach().clone(), model.weight.grad.clone()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            update, _, state = net(grad.view(1, -1), state)
        assert torch.allclose(model.weight.detach() - before, lr * update.view(1, 3), atol=1e-7)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        LearnedOptimizer(model.parameters(), net, lr=-1.0)
    # a state saved before the optimizer had an lr loads at lr 1 (step() raised KeyError)
    saved = optimizer.state_dict()
    del saved["param_groups"][0]["lr"]
    restored = LearnedOptimizer(model.parameters(), net)
    restored.load_state_dict(saved)
    assert restored.param_groups[0]["lr"] == 1.0
    restored.step()


def test_scaled_rmsprop_update_with_a_zero_output_is_torch_rmsprop():
    """With the output layer zeroed, exp(o_t) = 1 and the update is RMSprop's at learning rate
    ``output_scale`` (reference: torch.optim.RMSprop, α = 0.99, ε = 1e-8, on the same model)."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.03, update="scaled_rmsprop")
    nn.init.zeros_(net.output.weight), nn.init.zeros_(net.output.bias)
    ours, theirs = nn.Linear(3, 2), nn.Linear(3, 2)
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    optimizers = [
        LearnedOptimizer(ours.parameters(), net),
        torch.optim.RMSprop(theirs.parameters(), lr=0.03, alpha=0.99, eps=1e-8),
    ]
    for _ in range(6):
        for model, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            optimizer.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_complex_parameter_is_stepped_as_real_pairs_like_torch_rmsprop():
    """torch's optimizers step a complex parameter as its (real, imaginary) pairs; so does the
    learned one (its imaginary part was dropped). Reference: torch.optim.RMSprop on the same
    complex parameter, as in the test above. Sparse gradients are refused by name."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.03, update="scaled_rmsprop")
    nn.init.zeros_(net.output.weight), nn.init.zeros_(net.output.bias)
    start = torch.tensor([1 + 2j, -1 - 1j, 0.5 - 3j])
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    optimizers = [
        LearnedOptimizer([ours], net),
        torch.optim.RMSprop([theirs], lr=0.03, alpha=0.99, eps=1e-8),
    ]
    for _ in range(6):
        for p, optimizer in zip((ours, theirs), optimizers, strict=True):
            optimizer.zero_grad()
            ((p - (0.3 + 0.1j)).abs() ** 2).sum().backward()
            optimizer.step()
    assert not torch.allclose(ours.imag, start.imag)
    assert torch.allclose(torch.view_as_real(ours), torch.view_as_real(theirs), atol=1e-6)
    embedding = nn.Embedding(10, 3, sparse=True)
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        LearnedOptimizer(embedding.parameters(), net).step()


@pytest.mark.parametrize("update", ["scaled_gradient", "scaled_rmsprop"])
def test_scaled_updates_are_a_learned_step_size_on_the_gradient(update):
    """Reference: the paper's additive net with the same weights and scale 1 emits o_t itself;
    the update is −s·exp(o_t)⊙∇ (⊘ (√v_t + 1e-8), v by a plain loop, for RMSprop's direction),
    and exactly zero where the gradient is zero (no precision floor)."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.05, update=update)
    raw = LSTMOptimizerNet(output_scale=1.0)
    raw.load_state_dict(net.state_dict())
    state, raw_state, v = net.initial_state(3, 4), raw.initial_state(3, 4), torch.zeros(3, 4)
    for _ in range(4):
        grad = torch.randn(3, 4) * 10.0 ** torch.randint(-6, 2, (3, 4))
        grad[0, 0] = 0.0
        with torch.no_grad():
            update_t, _, state = net(grad, state)
            o, _, raw_state = raw(grad, raw_state)
        v = 0.99 * v + 0.01 * grad**2
        direction = grad / (v.sqrt() + 1e-8) if update == "scaled_rmsprop" else grad
        assert torch.allclose(update_t, -0.05 * o.exp() * direction, rtol=1e-5, atol=0)
        assert update_t[0, 0] == 0.0


def test_halting_head_starts_at_the_random_horizon_prior():
    p = 0.2
    net = LSTMOptimizerNet(halting=True, prior_p=p)
    family = RegressionFamily()
    run = OptimizerRun(family, net, 12)
    with torch.no_grad():
        features = unroll(run, family.sample(4, gen()), with_features=True).features
    c = torch.cumsum(-features[..., 3], dim=1)  # c_t = Σ Δq
    for T in (0, 5, 11):
        q = torch.log_softmax(c[:, : T + 1], dim=1)
        prior = random_horizon_log_conditional(p, T, dtype=torch.float64)
        assert torch.allclose(q, prior.expand_as(q), atol=1e-6)


def test_halting_increment_pools_the_top_layers_hidden_state():
    """Δq_t = mean_i(w_qᵀ h_t^{(i)}) + b_q with h_t the top LSTM layer's hidden state, from
    the cells run by hand over two steps (three layers, non-zero halting weights)."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(hidden=6, layers=3, halting=True)
    with torch.no_grad():
        net.halting.weight.normal_()
        net.halting.bias.fill_(0.3)
    n, D = 2, 4
    state = net.initial_state(n, D)
    hand = [(torch.zeros(n * D, 6), torch.zeros(n * D, 6)) for _ in range(3)]
    with torch.no_grad():
        for _ in range(2):
            grad = torch.randn(n, D) * torch.logspace(-5, 1, D)
            _, dq, state = net(grad, state)
            x = log_and_sign(grad, 10.0).reshape(n * D, 2)
            for layer, cell in enumerate(net.cells):
                hand[layer] = cell(x, hand[layer])
                x = hand[layer][0]
            top = x.view(n, D, 6)
            expected = [
                sum(float(net.halting.weight[0] @ top[r, i]) for i in range(D)) / D + 0.3
                for r in range(n)
            ]
            assert dq.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_lstm_step_macs_count_the_multiply_adds_the_layers_run():
    """Forward hooks count each linear map's multiply-adds (rows × weight entries) in one step
    of the LSTM optimizer: its cells and output layer, per coordinate of the function."""
    from stopwise.tasks.learned_optimizers.models import lstm_step_macs

    for preprocess, hidden, layers in ((10.0, 20, 2), (None, 7, 3)):
        net = LSTMOptimizerNet(hidden=hidden, layers=layers, preprocess=preprocess)
        counted = []

        def hook(module, inputs, output, counted=counted):
            rows = inputs[0].shape[0]
            if isinstance(module, nn.LSTMCell):
                counted.append(rows * (module.weight_ih.numel() + module.weight_hh.numel()))
            else:
                counted.append(rows * module.weight.numel())

        handles = [m.register_forward_hook(hook) for m in [*net.cells, net.output]]
        dim = 5
        with torch.no_grad():
            net(torch.randn(1, dim), net.initial_state(1, dim))
        for handle in handles:
            handle.remove()
        assert len(counted) == layers + 1
        assert lstm_step_macs(net, dim) == sum(counted)


# ---------------------------------------------------------------- meta-training


def test_meta_training_beats_the_untrained_lstm_on_held_out_quadratics():
    family = QuadraticFamily(5)
    torch.manual_seed(0)
    net = LSTMOptimizerNet(preprocess=None, output_scale=1.0)
    test = family.sample(200, gen(9))
    before, _ = loss_curves(family, net, test, [20])
    meta_train(net, family, 40, horizon=20, unroll=10, functions=32, lr=1e-2, seed=1)
    after, _ = loss_curves(family, net, test, [20])
    assert log10_gap(after).mean() < log10_gap(before).mean() - 0.3


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"iterations": -1}, "iterations must be >= 0; got -1"),
        ({"functions": 0}, "functions must be >= 1; got 0"),
        ({"horizon": 0, "unroll": 1}, "horizon must be >= 1; got 0"),
        ({"horizon": 5, "unroll": 6}, "unroll must lie in 1..horizon=5; got 6"),
    ],
)
def test_meta_training_refuses_a_bad_schedule_by_name(bad, message):
    """Each of the three meta-training loops refuses before it trains (a negative count of
    iterations returned no metrics; no functions failed deep inside a reshape)."""
    family = QuadraticFamily(3)
    settings = {"iterations": 2, "horizon": 5, "unroll": 5, "functions": 4, **bad}
    iterations = settings.pop("iterations")
    calls = [
        lambda: meta_train(LSTMOptimizerNet(), family, iterations, **settings),
        lambda: meta_train_act(LSTMOptimizerNet(halting=True), family, iterations, **settings),
        lambda: meta_train_restarts(
            [LSTMOptimizerNet()], family, iterations, seeds=[0], validate=lambda net: 0.0,
            validate_every=0, **settings,
        ),
    ]  # fmt: skip
    for call in calls:
        with pytest.raises(ValueError, match=re.escape(message)):
            call()


def test_meta_training_keeps_the_weights_validation_scored_best():
    """Scores scripted per evaluation: the second of four is the best, so the network must end
    on the weights it had then (copied by hand at each evaluation), not on the last ones."""
    family = RegressionFamily(obs_max=10)
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    scores, seen = iter([0.0, 5.0, 1.0, 2.0]), []

    def validate():
        seen.append({k: v.clone() for k, v in net.state_dict().items()})
        return next(scores)

    metrics = meta_train(net, family, 4, horizon=4, unroll=2, functions=4, seed=1,
                         validate=validate, validate_every=1)  # fmt: skip
    assert len(seen) == 4 and metrics["selected_iteration"] == 2
    assert metrics["selected_score"] == 5.0
    for key, value in net.state_dict().items():
        assert torch.equal(value, seen[1][key])
    assert not torch.equal(seen[1]["output.weight"], seen[3]["output.weight"])  # it did move on
    # without validation: the last weights, as before
    torch.manual_seed(0)
    plain = LSTMOptimizerNet()
    assert "selected_iteration" not in meta_train(plain, family, 4, horizon=4, unroll=2,
                                                  functions=4, seed=1)  # fmt: skip
    for key, value in plain.state_dict().items():
        assert torch.equal(value, seen[3][key])


@pytest.mark.parametrize("kind", [{}, {"update": "scaled_rmsprop", "output_scale": 1.0}])
def test_stacked_networks_step_and_learn_like_each_network_alone(kind):
    """Three networks as one: block r of the rows runs through network r (nn.LSTMCell there,
    the cell written out in the stack), with the same updates, states and weight gradients."""
    torch.manual_seed(0)
    nets = [LSTMOptimizerNet(layers=2, **kind) for _ in range(3)]
    stacked = StackedLSTMOptimizers(nets)
    n, D = 4, 3
    grad = torch.randn(3 * n, D) * torch.logspace(-6, 1, 3 * n).unsqueeze(-1)
    state = tuple(torch.randn_like(s) for s in stacked.initial_state(3 * n, D))
    if "update" in kind:  # RMSprop's running square is not negative
        state = (*state[:-1], state[-1].abs())
    update, _, new_state = stacked(grad, state)
    (update.square().sum() + sum(s.sum() for s in new_state)).backward()
    for r, net in enumerate(nets):
        rows = slice(r * n, (r + 1) * n)
        alone, _, alone_state = net(grad[rows], tuple(s[rows] for s in state))
        (alone.square().sum() + sum(s.sum() for s in alone_state)).backward()
        torch.testing.assert_close(update[rows], alone, rtol=1e-5, atol=1e-6)
        for a, b in zip(new_state, alone_state, strict=True):
            torch.testing.assert_close(a[rows], b, rtol=1e-5, atol=1e-6)
        for i, (key, weight) in enumerate(net.named_parameters()):
            torch.testing.assert_close(stacked.stacked[i].grad[r], weight.grad, rtol=1e-4,
                                       atol=1e-5, msg=key)  # fmt: skip
        assert stacked.weights(r).keys() == net.state_dict().keys()


def test_restarts_side_by_side_train_and_choose_like_separate_meta_training(tmp_path):
    """meta_train_restarts = one meta_train per network (its own seed, Adam state and choice
    on validation), up to float rounding; its checkpoint gives each network's chosen weights."""
    family = RegressionFamily(obs_max=10)
    val = family.sample(16, torch.Generator().manual_seed(9))
    score = lambda net: validation_score(family, net, val, 4)  # noqa: E731
    schedule = dict(horizon=4, unroll=2, functions=4, lr=1e-2, validate_every=2)
    torch.manual_seed(0)
    nets = [LSTMOptimizerNet(update="scaled_rmsprop", output_scale=1.0) for _ in range(3)]
    alone = [LSTMOptimizerNet(update="scaled_rmsprop", output_scale=1.0) for _ in range(3)]
    for a, b in zip(alone, nets, strict=True):
        a.load_state_dict(b.state_dict())
    settings = LoopSettings(checkpoint_dir=str(tmp_path))
    together = meta_train_restarts(nets, family, 7, seeds=[1, 2, 3], validate=score,
                                   settings=settings, stage="r", **schedule)  # fmt: skip
    checkpoint = torch.load(tmp_path / "r.pt", weights_only=True)["state"]
    for r, net in enumerate(alone):
        metrics = meta_train(net, family, 7, seed=r + 1, validate=lambda net=net: score(net),
                             **schedule)  # fmt: skip
        assert together[r]["selected_iteration"] == metrics["selected_iteration"]
        assert together[r]["selected_score"] == pytest.approx(metrics["selected_score"], 1e-5)
        assert together[r]["final_loss"] == pytest.approx(metrics["final_loss"], 1e-5)
        for key, value in net.state_dict().items():
            # (Adam divides by √v: a gradient near 0 moves its weight by up to lr · rounding)
            torch.testing.assert_close(nets[r].state_dict()[key], value, rtol=1e-4, atol=2e-5)
            assert torch.equal(trained_weights(checkpoint, r)[key], nets[r].state_dict()[key])
    # without validation the checkpoint's stacked weights are the last ones
    last = meta_train_restarts(nets[:2], family, 2, seeds=[1, 2], validate=score, stage="q",
                               settings=settings, **{**schedule, "validate_every": 0})  # fmt: skip
    checkpoint = torch.load(tmp_path / "q.pt", weights_only=True)["state"]
    assert "selected_score" not in last[0]
    for r in range(2):
        for key, value in nets[r].state_dict().items():
            assert torch.equal(trained_weights(checkpoint, r)[key], value)


def test_restarts_with_no_meta_iteration_keep_the_weights_and_no_network_is_refused():
    family = RegressionFamily(obs_max=10)
    nets = [LSTMOptimizerNet() for _ in range(2)]
    before = [copy.deepcopy(net.state_dict()) for net in nets]
    out = meta_train_restarts(nets, family, 0, seeds=[1, 2], validate=lambda net: 0.0,
                              validate_every=1, horizon=4, unroll=2, functions=4)  # fmt: skip
    assert out == [{}, {}] == [meta_train(LSTMOptimizerNet(), family, 0, horizon=4, unroll=2)] * 2
    for net, weights in zip(nets, before, strict=True):
        for key, value in net.state_dict().items():
            assert torch.equal(value, weights[key])
    with pytest.raises(ValueError, match="at least one network"):
        StackedLSTMOptimizers([])


def test_restarts_side_by_side_resume_to_the_uninterrupted_weights_and_choices(tmp_path):
    """Stopped mid-stage (an error in the 3rd validation) and rerun from the checkpoint: every
    restart's weights, Adam state, function stream and validation choice carry over, so the
    result equals an uninterrupted run exactly."""
    family = RegressionFamily(obs_max=10)
    val = family.sample(8, torch.Generator().manual_seed(9))
    schedule = dict(horizon=4, unroll=2, functions=4, lr=1e-2, validate_every=1)

    def train(folder, fail_at=None):
        torch.manual_seed(0)
        nets = [LSTMOptimizerNet(update="scaled_rmsprop", output_scale=1.0) for _ in range(2)]
        calls = []

        def score(net):
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError("stopped")
            return validation_score(family, net, val, 4)

        settings = LoopSettings(checkpoint_dir=str(folder), checkpoint_every=1)
        metrics = meta_train_restarts(nets, family, 5, seeds=[1, 2], validate=score,
                                      settings=settings, **schedule)  # fmt: skip
        return nets, metrics

    whole, whole_metrics = train(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="stopped"):
        train(tmp_path / "cut", fail_at=5)  # restart 0's third score: after 2 checkpoints
    resumed, resumed_metrics = train(tmp_path / "cut")
    assert resumed_metrics == whole_metrics
    for a, b in zip(whole, resumed, strict=True):
        for key, value in a.state_dict().items():
            assert torch.equal(b.state_dict()[key], value), key


def test_validation_score_is_minus_the_mean_log_gap_over_the_trajectory():
    """Reference: plain gradient descent written out, the gap after every step."""
    from stopwise.tasks.learned_optimizers.experiment import validation_score
    from stopwise.tasks.learned_optimizers.models import HandDesigned

    family = RegressionFamily(obs_max=10)
    functions = family.sample(6, gen(4))
    theta, logs = family.initial(functions), []
    for t in range(5):
        _, grad = loss_and_gradient(family, theta, functions, t)
        theta = theta - 0.1 * grad
        logs.append(torch.log10(family.gap(theta, functions)))
    expected = -float(torch.stack(logs).mean())
    assert validation_score(family, HandDesigned("sgd", 0.1), functions, 5) == pytest.approx(
        expected, rel=1e-6
    )


def test_log_gap_objective_steps_down_the_gradient_of_the_summed_log_gaps():
    """Reference: the rollout written out by hand with autograd through the whole window,
    meta-loss mean_n Σ_t log(f(θ_{t+1}) − f(θ̂)). Adam's first step moves every parameter by
    −lr·sign(gradient), so the signs of the change must match the reference gradient's."""
    family = RegressionFamily(obs_max=10)
    torch.manual_seed(0)
    net = LSTMOptimizerNet()
    start = [q.detach().clone() for q in net.parameters()]
    functions = GeneratedBatches(lambda n, g: family.sample(n, g), 8, 3)(0)
    theta, state = family.initial(functions), net.initial_state(8, 2)
    meta_loss = 0
    for t in range(4):
        point = theta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(family.loss(point, functions, t).sum(), point)
        update, _, state = net(grad, state)
        theta = theta + update
        meta_loss = meta_loss + torch.log(family.loss(theta, functions) - family.optimum(functions))
    reference = torch.autograd.grad(meta_loss.mean(), list(net.parameters()))
    meta_train(
        net, family, 1, horizon=4, unroll=4, functions=8, lr=1e-3, seed=3, objective="log_gap"
    )
    for before, after, grad in zip(start, net.parameters(), reference, strict=True):
        clear = grad.abs() > 1e-6
        assert clear.any()
        assert torch.equal(torch.sign(before - after)[clear], torch.sign(grad)[clear])
    with pytest.raises(ValueError, match="known optimum"):
        meta_train(net, LeastSquaresWithoutOptimum(), 1, horizon=2, unroll=2, objective="log_gap")


class LeastSquaresWithoutOptimum:
    dim = 2

    def sample(self, n, generator):
        return {"y": torch.randn(n, 2, generator=generator)}

    def initial(self, functions):
        return torch.zeros_like(functions["y"])

    def loss(self, theta, functions, step=0):
        return ((theta - functions["y"]) ** 2).sum(-1)


def test_act_gradient_is_the_truncated_bptt_gradient_of_the_whole_bound():
    """Reference: one graph over the whole trajectory, cut (detached) at window boundaries, and
    the bound computed once over all steps."""
    family = RegressionFamily(obs_max=10)
    functions = family.sample(6, gen())
    p, horizon = 0.2, 9
    for unroll_length, step_cost in ((horizon, 0.0), (4, 0.0), (4, 0.05)):
        torch.manual_seed(0)
        net = LSTMOptimizerNet(halting=True, prior_p=p)
        with torch.no_grad():  # a non-trivial halting head
            net.halting.weight.normal_(0, 0.5)
        act_meta_gradient(
            net, family, functions, p, 0.7, horizon=horizon, unroll=unroll_length,
            step_cost=step_cost,
        )  # fmt: skip
        got = [q.grad.clone() for q in net.parameters()]
        net.zero_grad()
        theta = family.initial(functions)
        state = net.initial_state(*theta.shape)
        losses, dq = [], []
        for steps in _windows(horizon, unroll_length):
            theta, state = theta.detach(), tuple(s.detach() for s in state)
            for t in steps:
                _, grad = loss_and_gradient(family, theta, functions, t)
                update, halting, state = net(grad, state)
                theta = theta + update
                losses.append(family.loss(theta, functions, t + 1) + step_cost * (t + 1))
                dq.append(halting)
        scale = functions["count"].unsqueeze(-1)
        bound = random_horizon_bound(
            torch.cumsum(torch.stack(dq, 1), 1), scale * torch.stack(losses, 1), p, 0.7
        )
        bound.backward()
        for a, q in zip(got, net.parameters(), strict=True):
            assert torch.allclose(a, q.grad, rtol=1e-4, atol=1e-6)


def test_halting_only_meta_training_moves_the_halting_head_and_nothing_else():
    """The two-stage schedule: the update network keeps its weights to the bit, the halting
    head learns, and its first step is Adam's on the halting gradient of the whole bound."""
    family = RegressionFamily(obs_max=10)
    torch.manual_seed(0)
    net = LSTMOptimizerNet(halting=True, prior_p=0.2)
    with torch.no_grad():  # a non-trivial halting head
        net.halting.weight.normal_(0, 0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    reference = LSTMOptimizerNet(halting=True, prior_p=0.2)
    reference.load_state_dict(before)
    functions = GeneratedBatches(lambda n, g: family.sample(n, g), 6, seed=3)(0)
    act_meta_gradient(reference, family, functions, 0.2, horizon=8, unroll=4)
    lr = 1e-2
    meta_train_act(net, family, 1, prior_p=0.2, horizon=8, unroll=4, functions=6, lr=lr,
                   seed=3, halting_only=True)  # fmt: skip
    for name, value in net.state_dict().items():
        if name.startswith("halting."):
            # Adam's first step moves every coordinate by lr against its gradient's sign.
            grad = dict(reference.named_parameters())[name].grad
            expected = before[name] - lr * torch.sign(grad)
            assert torch.allclose(value, expected, atol=1e-6), name
        else:
            assert torch.equal(value, before[name]), name
    assert all(q.requires_grad for q in net.parameters())


def test_tuning_picks_the_best_validation_learning_rate():
    family = RegressionFamily()
    val = family.sample(50, gen())
    rates = [1e-3, 1e-2, 1e-1]

    def score(losses, functions):
        return log10_gap(losses - family.optimum(functions).unsqueeze(-1))

    tuned = tune_learning_rates(family, ["sgd"], rates, val, [5, 30], score)["sgd"]
    for H in (5, 30):
        means = []
        for lr in rates:
            losses, _ = loss_curves(family, HandDesigned("sgd", lr), val, [H])
            means.append(float(score(losses, val).mean()))
        assert tuned["lr"][H] == rates[min(range(3), key=means.__getitem__)]
        assert tuned["scores"][H] == pytest.approx(means)


def test_loss_curves_in_chunks_keep_each_rows_own_learning_rate():
    """Rows are run ``chunk`` at a time; a per-row learning rate must follow its row into every
    chunk (20 rows in chunks of 7: the later chunks' rates are not the first ones')."""
    family = RegressionFamily()
    functions = family.sample(20, gen(5))
    rates = torch.logspace(-3, -0.5, 20).double()
    record = [1, 4, 12]
    values, theta = loss_curves(family, HandDesigned("sgd", rates), functions, record, chunk=7)
    assert values.shape == (20, 3)
    for i in range(20):
        _, thetas = _plain_sgd(family, functions, i, float(rates[i]), record[-1])
        one = {k: v[i : i + 1] for k, v in functions.items()}
        expected = [float(family.loss(thetas[t - 1].unsqueeze(0), one)) for t in record]
        assert values[i].tolist() == pytest.approx(expected, rel=1e-5)
        assert torch.allclose(theta[i], thetas[-1], rtol=1e-5, atol=1e-9)


def test_the_lstm_optimizer_runs_in_chunks_of_a_bounded_number_of_coordinates():
    """By default the LSTM optimizer runs about CHUNK_COORDINATES coordinates at a time (its
    per-coordinate state stays in cache), the hand-designed ones HAND_CHUNK functions; the
    chunks change no row's result (QuadraticFamily, D = 10: 819 functions a chunk)."""
    family = QuadraticFamily(10)
    functions = family.sample(1000, gen(3))
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=1.0)
    chunk = _default_chunk(family, net, functions)
    assert chunk == CHUNK_COORDINATES // 10 < 1000
    assert _default_chunk(family, HandDesigned("sgd", 0.01), functions) == HAND_CHUNK
    record = [1, 5, 20]
    default = loss_curves(family, net, functions, record)
    whole = loss_curves(family, net, functions, record, chunk=1000)
    for a, b in zip(default, whole, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-12)


# ---------------------------------------------------------------- stopping


def test_stopping_runs_for_real_and_matches_the_dense_rule():
    """A function that stops after step t costs t + 1 gradient evaluations in shrink mode, and
    every mode stops where the dense scores say."""

    class Counting(RegressionFamily):
        evaluated = 0

        def loss_and_gradient(self, theta, functions, step=0):
            Counting.evaluated += theta.shape[0]
            return super().loss_and_gradient(theta, functions, step)

    family = Counting()
    run = OptimizerRun(family, HandDesigned("adam", 0.1), 15)
    functions = family.sample(40, gen())
    policy = FeatureScore("log10_grad_norm", -1.0)
    with torch.no_grad():
        features = unroll(run, functions, with_features=True).features
    scores = policy(features.flatten(0, 1)).view(40, 15)
    rule = ScoreThreshold(0.5)  # ‖g_t‖ < 10^-0.5
    dense = stop_indices(scores, rule)
    assert 1 < float(dense.double().mean()) < 13  # some stop early, not all at once
    for mode in ("dense", "masked", "shrink"):
        Counting.evaluated = 0
        with torch.no_grad():
            result = run_adaptive(run, policy, functions, rule, mode=mode)
        assert torch.equal(result.stop_index, dense)
        if mode == "shrink":
            assert Counting.evaluated == int((dense + 1).sum())  # one gradient per step run
        else:
            assert Counting.evaluated == 40 * 15
    # The prediction is θ after the stop step: its loss is the dense trajectory's there.
    trajectory = unroll(run, functions).predictions
    assert torch.allclose(result.predictions, trajectory[torch.arange(40), dense])


def test_gradient_norm_rule_stops_at_the_first_small_gradient():
    family = RegressionFamily()
    functions = family.sample(30, gen())
    run = OptimizerRun(family, HandDesigned("adam", 0.1), 40)
    with torch.no_grad():
        trajectory = unroll(run, functions, with_features=True)
    policy = FeatureScore("log10_grad_norm", -1.0)
    tolerance = 1e-2
    scores = torch.stack([policy(trajectory.features[:, t]) for t in range(40)], 1)
    index = stop_indices(scores, ScoreThreshold(_tolerance_threshold(tolerance)))
    thetas = torch.cat([family.initial(functions).unsqueeze(1), trajectory.predictions], 1)
    for i in range(30):  # plain loop: the gradient at θ_t; stop after step t once ‖g_t‖ < tol
        one = {k: v[i : i + 1] for k, v in functions.items()}
        expected = 39
        for t in range(40):
            _, g = loss_and_gradient(family, thetas[i : i + 1, t], one, t)
            if g.norm() < tolerance:
                expected = t
                break
        assert int(index[i]) == expected
    assert 0 < float(index.double().mean()) < 39  # the rule stops some runs, not all at once
    assert _tolerance_threshold(0.0) == math.inf  # tolerance 0: never stops
    assert _tolerance_threshold(3e-5) == -math.log10(3e-5)  # in float64, not float32


def _plain_sgd(family, functions, i, lr, steps):
    """Row i run alone by plain SGD on autograd gradients: the losses f_0..f_{steps−1} at
    θ_0..θ_{steps−1} and θ_1..θ_steps."""
    one = {k: v[i : i + 1] for k, v in functions.items()}
    theta = family.initial(one).clone().requires_grad_(True)
    losses, thetas = [], []
    for t in range(steps):
        loss = family.loss(theta, one, t).sum()
        (grad,) = torch.autograd.grad(loss, theta)
        losses.append(float(loss.detach()))
        theta = (theta - lr * grad).detach().requires_grad_(True)
        thetas.append(theta.detach()[0])
    return losses, thetas


def test_improvement_rule_stops_at_the_first_small_decrease_of_the_loss():
    """The feature is log10(f_{t−1} − f_t) clamped to [1e-12, 1e12] (1e12 at t = 0), and the
    rule 'stop once f_{t−1} − f_t < tol' stops there, both from plain SGD loops."""
    family = RegressionFamily()
    functions = family.sample(20, gen(4))
    lr, T, tolerance = 0.0625, 30, 1e-3  # a float32 rate: HandDesigned keeps float32 rates
    run = OptimizerRun(family, HandDesigned("sgd", lr), T)
    with torch.no_grad():
        features = unroll(run, functions, with_features=True).features
    policy = FeatureScore("log10_improvement", -1.0)
    scores = torch.stack([policy(features[:, t]) for t in range(T)], 1)
    index = stop_indices(scores, ScoreThreshold(_tolerance_threshold(tolerance)))
    for i in range(20):
        losses, _ = _plain_sgd(family, functions, i, lr, T)
        expected = T - 1
        for t in range(T):
            drop = 1e12 if t == 0 else losses[t - 1] - losses[t]
            feature = math.log10(min(max(drop, 1e-12), 1e12))
            assert float(features[i, t, 2]) == pytest.approx(feature, rel=1e-9, abs=1e-9)
            if drop < tolerance:
                expected = t
                break
        assert int(index[i]) == expected
    assert 1 < float(index.double().mean()) < T - 1  # some stop early, not all at once


def test_evaluate_stop_chooses_on_validation_and_scores_test():
    torch.manual_seed(0)
    n, T = 200, 10

    def split(seed):
        g = gen(seed)
        decay = torch.rand(n, 1, generator=g) + 0.2
        gap = torch.exp(-decay * torch.arange(1, T + 1)) + 1e-3
        scores = -torch.log(gap) + 0.1 * torch.randn(n, T, generator=g)
        return StopData(gap + 1.0, gap, scores, {"decay": decay.squeeze(1)})

    val, test = split(1), split(2)
    setting = StopEvaluation([1e-3, 1e-1], 5, float(val.losses[:, -1].mean()),
                             float(test.losses[:, -1].mean()), 0.05)  # fmt: skip
    record = evaluate_stop(val, test, {"half": 3.0}, "half", setting)
    index = stop_indices(test.scores, ScoreThreshold(3.0))
    assert record["natural"]["steps"] == pytest.approx(float((index + 1).double().mean()))
    assert record["natural"]["gap"] == pytest.approx(
        float(test.gap.gather(1, index[:, None]).mean())
    )
    for row in record["tradeoff"]:  # the choice is the best on validation among the options
        assert row["val_value"] <= float(
            (val.gap.gather(1, stop_indices(val.scores, ScoreThreshold(3.0))[:, None]).squeeze(1)
             + row["step_cost"] * (stop_indices(val.scores, ScoreThreshold(3.0)) + 1)).mean()
        ) + 1e-12  # fmt: skip
    # more decay (easier function) → earlier stop
    assert record["natural"]["spearman"]["decay"] < -0.3
    assert [p["depth"] for p in record["fixed_depth"]] == list(range(1, T + 1))


def _plain_stops(scores, record_or_thresholds):
    """0-based stop steps by a loop over rows and steps: the first step whose score is ≥ that
    step's threshold, else the last; a mix (``{"score_threshold", "mix"}``) gives the row at
    batch position i the first rule when frac((i + 1)/φ) < share (MixedRule's definition)."""
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    first = record_or_thresholds
    mix = None
    if isinstance(first, dict):
        first, mix = first["score_threshold"], first.get("mix")
    out = []
    for i, row in enumerate(scores.tolist()):
        thresholds = first
        if mix is not None and not ((i + 1) * golden) % 1.0 < mix["share"]:
            thresholds = mix["score_threshold"]
        if not isinstance(thresholds, list):
            thresholds = [thresholds] * len(row)
        stop = len(row) - 1
        for t, value in enumerate(row[:-1]):
            if value >= thresholds[t]:
                stop = t
                break
        out.append(stop)
    return out


def test_evaluate_stop_tradeoff_and_reach_match_plain_loops():
    """The trade-off per λ and the "reach" row against plain loops over every option (the
    named thresholds, the curve's budget rules, the floored grid): the option of least
    validation mean gap + λ·steps (steps 1-based) is chosen and reported with its *test*
    numbers; "reach" is the option of fewest mean validation steps among those whose mean
    validation NLL is within the tolerance of the validation reference, reported on test."""
    from stopwise.selection import floored_rules

    n, T = 40, 6

    def split(seed):
        g = gen(seed)
        decay = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.2
        noise = torch.exp(0.5 * torch.randn(n, T, generator=g, dtype=torch.float64))
        gap = torch.exp(-decay * torch.arange(1, T + 1)) * noise + 1e-3
        scores = -torch.log(gap) + 0.5 * torch.randn(n, T, generator=g, dtype=torch.float64)
        return StopData(gap + 1.0, gap, scores, {})

    val, test = split(11), split(12)
    costs = [1e-3, 2e-2, 6e-2]
    ref_val, ref_test = float(val.losses[:, 3].mean()), float(test.losses[:, 3].mean())
    setting = StopEvaluation(costs, 3, ref_val, ref_test, 0.01)
    candidates = {"low": 1.0, "mid": 2.5, "high": 4.0}
    record = evaluate_stop(val, test, candidates, None, setting)

    options = {name: thr for name, thr in candidates.items()}
    for point in record["curve"]:
        options[f"budget {point['budget']:.4g}"] = point
    for k, rule in enumerate(floored_rules(val.scores)):
        options[f"floored {k}"] = rule.score_threshold.tolist()
    val_stops = {name: _plain_stops(val.scores, rule) for name, rule in options.items()}
    test_stops = {name: _plain_stops(test.scores, rule) for name, rule in options.items()}

    def mean_value(data, stops, cost):
        return sum(float(data.gap[i, t]) + cost * (t + 1) for i, t in enumerate(stops)) / n

    chosen_on_test_differs = False
    for cost, row in zip(costs, record["tradeoff"], strict=True):
        val_values = {name: mean_value(val, val_stops[name], cost) for name in options}
        best = min(val_values.values())
        assert val_values[row["rule"]] == pytest.approx(best, rel=1e-12)
        assert row["val_value"] == pytest.approx(best, rel=1e-12)
        stops = test_stops[row["rule"]]
        assert row["value"]["mean"] == pytest.approx(mean_value(test, stops, cost))
        assert row["mean_steps"] == pytest.approx(sum(t + 1 for t in stops) / n)
        assert row["gap"] == pytest.approx(
            sum(float(test.gap[i, t]) for i, t in enumerate(stops)) / n
        )
        test_best = min(mean_value(test, test_stops[name], cost) for name in options)
        chosen_on_test_differs |= row["value"]["mean"] > test_best + 1e-9
    assert chosen_on_test_differs  # the data tell a validation choice from a test one
    assert any("mix" in point for point in record["curve"])  # mixes are among the options

    def mean_at(data, stops, field):
        table = data.losses if field == "nll" else data.gap
        return sum(float(table[i, t]) for i, t in enumerate(stops)) / n

    reaching = [
        name for name in options
        if mean_at(val, val_stops[name], "nll") <= ref_val + 0.01 * abs(ref_val)
    ]  # fmt: skip
    assert 0 < len(reaching) < len(options)
    fewest = min(sum(t + 1 for t in val_stops[name]) / n for name in reaching)
    reach = record["reach"]
    assert reach["rule"] in reaching
    assert reach["val_steps"] == pytest.approx(fewest, rel=1e-12)
    assert sum(t + 1 for t in val_stops[reach["rule"]]) / n == pytest.approx(fewest, rel=1e-12)
    stops = test_stops[reach["rule"]]
    assert reach["steps"] == pytest.approx(sum(t + 1 for t in stops) / n)
    assert reach["nll"] == pytest.approx(mean_at(test, stops, "nll"))
    assert reach["gap"] == pytest.approx(mean_at(test, stops, "gap"))
    assert reach["reaches_reference"] == (mean_at(test, stops, "nll") <= ref_test * 1.01)
    fewest_on_test = min(sum(t + 1 for t in test_stops[name]) / n for name in reaching)
    assert reach["steps"] != pytest.approx(fewest_on_test)  # a test choice would differ


def test_fixed_depth_tradeoff_is_chosen_on_validation_by_a_plain_loop():
    """Per λ, the depth d (1-based) of least validation mean gap + λ·d, reported with its test
    mean gap + λ·d. Hand-made splits whose best depths differ (validation: 2, test: 3 at
    λ = 0.1), so a test choice or a 0-based d shows."""
    val_gap = torch.tensor([[1.0, 0.2, 0.15, 0.14], [0.8, 0.3, 0.25, 0.2]], dtype=torch.float64)
    test_gap = torch.tensor([[1.0, 0.6, 0.1, 0.09], [0.9, 0.5, 0.1, 0.08]], dtype=torch.float64)
    val = StopData(val_gap + 1, val_gap, torch.zeros(2, 4), {})
    test = StopData(test_gap + 1, test_gap, torch.zeros(2, 4), {})
    costs = [0.0, 0.1, 1.0]
    for cost, row in zip(costs, fixed_depth_tradeoff(val, test, costs), strict=True):
        values = [
            sum(float(val_gap[i, d - 1]) for i in range(2)) / 2 + cost * d for d in range(1, 5)
        ]
        depth = 1 + min(range(4), key=lambda k, values=values: values[k])
        assert row["depth"] == depth
        expected = sum(float(test_gap[i, depth - 1]) for i in range(2)) / 2
        assert row["gap"] == pytest.approx(expected)
        assert row["value"]["mean"] == pytest.approx(expected + cost * depth)
    assert [row["depth"] for row in fixed_depth_tradeoff(val, test, costs)] == [4, 2, 1]


def test_oracle_tradeoff_stops_each_function_at_its_best_step():
    from stopwise.stats import spearman

    n, T = 50, 6
    g = gen(3)
    rate = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.1
    gap = torch.exp(-rate * torch.arange(1, T + 1))  # slower decay: stops later
    hardness = -rate.squeeze(1) + 0.3 * torch.rand(n, generator=g, dtype=torch.float64)
    data = StopData(gap + 1.0, gap, torch.zeros(n, T), {"hardness": hardness})
    for cost, row in zip([1e-2, 3e-2], oracle_tradeoff(data, [1e-2, 3e-2]), strict=True):
        steps, values = [], []
        for i in range(n):  # plain loop: the step t (1-based) of least gap + cost·t
            best = min(range(T), key=lambda t, i=i: float(gap[i, t]) + cost * (t + 1))
            steps.append(best + 1)
            values.append(float(gap[i, best]) + cost * (best + 1))
        assert row["mean_steps"] == pytest.approx(sum(steps) / n)
        assert row["value"]["mean"] == pytest.approx(sum(values) / n)
        assert row["spearman"]["hardness"] == pytest.approx(spearman(steps, hardness.numpy()))


def test_stop_data_at_gives_the_numbers_at_the_stop_step_and_the_regret():
    """Regret is f(θ_stop) − min_t f(θ_t) over the trajectory, by hand on two functions."""
    losses = torch.tensor([[3.0, 1.0, 2.5], [5.0, 4.0, 7.0]], dtype=torch.float64)
    gap = torch.tensor([[1e-3, 1e-1, 1e-2], [1.0, 2.0, 3.0]], dtype=torch.float64)
    at = StopData(losses, gap, torch.zeros(2, 3), {}).at(torch.tensor([2, 0]))
    assert at["steps"].tolist() == [3.0, 1.0]
    assert at["nll"].tolist() == [2.5, 5.0]
    assert at["gap"].tolist() == [1e-2, 1.0]
    assert at["log10_gap"].tolist() == pytest.approx([-2.0, 0.0])
    assert at["regret"].tolist() == [1.5, 1.0]


def test_log10_gap_is_floored_at_1e_minus_25_and_diverged_runs_count_as_30():
    """Gaps down to 1e-25 keep their log (1e-20 → −20); below it −25; NaN and inf → 30."""
    gap = torch.tensor([1e-3, 1e-20, 1e-30, 0.0, math.nan, math.inf], dtype=torch.float64)
    assert log10_gap(gap).tolist() == pytest.approx([-3.0, -20.0, -25.0, -25.0, 30.0, 30.0])


def test_step_saving_is_one_minus_the_mean_stop_step_over_the_horizon():
    """Rows stopping at steps 1 and 2 of T = 4: mean 1.5 steps, saving 1 − 1.5/4 = 0.625."""
    losses = torch.tensor([[4.0, 3.0, 2.0, 1.0]] * 2, dtype=torch.float64)
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    data = StopData(losses, losses, scores, {})
    setting = StopEvaluation([1e-3], 2, 1.0, 1.0, 0.1)
    natural = evaluate_stop(data, data, {"one": 1.0}, "one", setting)["natural"]
    assert natural["steps"] == pytest.approx(1.5)
    assert natural["step_saving"] == pytest.approx(0.625)


def test_step_penalised_oracle_is_argmin_of_loss_plus_cost():
    losses = torch.tensor([[3.0, 1.0, 0.9, 0.89]])
    assert int(step_penalised(losses, 0.2).argmin()) == 1
    assert int(step_penalised(losses, 0.0).argmin()) == 3


# ---------------------------------------------------------------- report helpers


def test_pooled_interval_is_the_interval_over_all_functions_of_all_seeds():
    from stopwise.tasks.learned_optimizers.metrics import summary
    from stopwise.tasks.learned_optimizers.report import pooled

    seeds = [torch.randn(300, generator=gen(s), dtype=torch.float64) + s for s in range(3)]
    got = pooled([summary(v) for v in seeds])
    everything = torch.cat(seeds)
    assert got["mean"] == pytest.approx(float(everything.mean()))
    assert got["sd"] == pytest.approx(float(everything.std()))
    assert got["hi"] - got["mean"] == pytest.approx(1.96 * float(everything.std()) / 30.0)


def test_causal_rule_ignores_the_first_increment():
    """Δq_0 shifts every posterior logit alike, so it never stops a run: at the prior (constant
    Δq_t = log s < 0) the causal rule stops after the second step, the first whose increment
    the posterior depends on."""
    from stopwise.tasks.learned_optimizers.models import CausalHaltingScore

    family = RegressionFamily()
    net = LSTMOptimizerNet(halting=True, prior_p=0.3)
    run = OptimizerRun(family, net, 6)
    functions = family.sample(5, gen())
    policy = CausalHaltingScore()
    with torch.no_grad():
        result = run_adaptive(run, policy, functions, ScoreThreshold(0.0), mode="shrink")
        features = unroll(run, functions, with_features=True).features
    assert torch.equal(result.stop_index, torch.ones(5, dtype=torch.long))
    scores = torch.stack([policy(features[:, t], t) for t in range(6)], 1)
    assert bool(torch.isinf(scores[:, 0]).all())
    expected = torch.full((5, 5), -0.5 * math.log1p(-0.3), dtype=torch.float64)
    assert torch.allclose(scores[:, 1:], expected, atol=1e-6)


def test_posterior_mode_and_median_by_plain_loops():
    """The non-causal readings of the posterior q(t) ∝ exp(c_t), c_t = Σ_{1≤u≤t} Δq_u (Δq_0
    dropped: it shifts every c_t alike): the mode argmax_t c_t and the median, the first t whose
    cumulative q reaches 1/2, with the numbers at those steps."""
    n, T = 40, 9
    g = gen(6)
    dq = 1.5 * torch.randn(n, T, generator=g, dtype=torch.float64) + 0.3
    scores = -dq
    scores[:, 0] = -math.inf  # the causal score: −Δq_t, −inf at t = 0
    gap = torch.rand(n, T, generator=g, dtype=torch.float64)
    losses = gap + 2.0
    causal = torch.randint(0, T, (n,), generator=g)
    data = StopData(losses, gap, scores, {})
    setting = StopEvaluation([0.1], 3, 2.5, 2.5, 0.2)
    out = _posterior_rules(data, causal, setting)["posterior"]
    modes, medians, means = [], [], []
    for i in range(n):
        c, total = [0.0], 0.0
        for t in range(1, T):
            total += float(dq[i, t])
            c.append(total)
        modes.append(max(range(T), key=c.__getitem__))
        weights = [math.exp(v) for v in c]
        q = [w / sum(weights) for w in weights]
        means.append(sum(q[t] * (t + 1) for t in range(T)))
        cdf = 0.0
        for t in range(T):
            cdf += q[t]
            if cdf >= 0.5:
                medians.append(t)
                break
    assert modes != medians  # the two rules differ on these inputs
    assert out["posterior_mean_steps"] == pytest.approx(sum(means) / n)
    for rule, index in (("mode", modes), ("median", medians)):
        row = out[rule]
        assert row["steps"] == pytest.approx(sum(t + 1 for t in index) / n)
        assert row["gap"] == pytest.approx(sum(float(gap[i, t]) for i, t in enumerate(index)) / n)
        assert row["nll"] == pytest.approx(
            sum(float(losses[i, t]) for i, t in enumerate(index)) / n
        )
        assert row["causal_minus_rule_steps"] == pytest.approx(
            sum(int(causal[i]) - t for i, t in enumerate(index)) / n
        )
        assert row["same_step"] == pytest.approx(
            sum(int(causal[i]) == t for i, t in enumerate(index)) / n
        )


def test_a_stop_rule_beats_the_hand_designed_rules_only_when_the_interval_says_so():
    """Per λ the trade-off (suboptimality + λ·steps) of the ACT optimizer and L2S-stop against
    the best hand-designed rule, paired over seeds: lower on every seed is not enough when the
    95% interval of the difference crosses zero (DESIGN: met when the interval says so)."""
    from types import SimpleNamespace

    import numpy as np
    from scipy.stats import t as student_t

    from stopwise.tasks.learned_optimizers.report import _tradeoff_section

    seeds = [0, 1, 2]
    rules = {0: 1.0, 1: 1.0, 2: 1.0}
    act = {0: 0.99, 1: 0.999, 2: 0.5}  # lower on every seed, interval across zero
    l2s = {0: 0.90, 1: 0.91, 2: 0.89}  # lower on every seed, interval below zero

    def point(value):
        return [{"value": {"mean": value}, "mean_steps": 5.0}]

    records = {}
    for s in seeds:
        records[("act-f", s)] = {"tradeoff": point(act[s]), "fixed_tradeoff": point(1.0)}
        records[("l2s-f", s)] = {"tradeoff": point(l2s[s]), "fixed_tradeoff": point(1.0),
                                 "oracle": point(0.5)}  # fmt: skip
        records[("rules-f", s)] = {"best_tradeoff": point(rules[s])}
    config = SimpleNamespace(step_costs=[1e-3], test_functions=100)
    section, _ = _tradeoff_section(records, seeds, config, "f")
    row = section["rows"][0]
    diffs = np.array([act[s] - rules[s] for s in seeds])
    hi = diffs.mean() + student_t.ppf(0.975, 2) * diffs.std(ddof=1) / np.sqrt(3)
    assert (diffs < 0).all() and hi > 0
    assert row["act_minus_rules"]["hi"] == pytest.approx(hi)
    assert not row["act_beats_rules"] and row["l2s_beats_rules"]
    one, _ = _tradeoff_section(records, [2], config, "f")  # one seed: its own difference
    assert one["rows"][0]["act_beats_rules"]


def test_the_lstm_beats_the_tuned_optimizers_over_seeds_by_the_interval_or_one_seeds_value():
    """The verdict "beats every tuned optimizer over seeds" is the paired interval of
    LSTM − optimizer below zero; with one seed there is no interval and the seed's own difference
    decides (it used to read ``below_zero``, False whenever the interval is undefined, so one seed
    never beat)."""
    from types import SimpleNamespace

    from stopwise.tasks.learned_optimizers.report import _optimizer_section

    def summary(mean):
        return {"mean": mean, "sd": 1.0, "n": 100}

    lstm = {0: -5.0, 1: -6.0, 2: -1.0}  # below RMSprop on every seed; interval across zero
    rmsprop = {0: -4.0, 1: -5.0, 2: -0.9}
    records = {}
    for s in lstm:
        records[("lstm-f", s)] = {"test": {"20": summary(lstm[s])}, "test_nll": 1.0}
        records[("hand-f", s)] = {"test": {"rmsprop": {"20": summary(rmsprop[s])}}}
    config = SimpleNamespace(
        report_steps=[20], horizon=20, beyond=[], optimizers=["rmsprop"], test_functions=100
    )
    one, _, _ = _optimizer_section(records, [0], config, "f")
    assert one["comparisons"]["20"]["rmsprop"]["lo"] is None
    assert one["beats_every_optimizer"]["20"]["over_seeds"]  # −1 on its one seed
    three, _, _ = _optimizer_section(records, [0, 1, 2], config, "f")
    assert three["comparisons"]["20"]["rmsprop"]["hi"] > 0
    assert not three["beats_every_optimizer"]["20"]["over_seeds"]
    tight = {0: -5.0, 1: -6.0, 2: -1.8}  # −1, −1, −0.9: interval below zero
    for s in tight:
        records[("lstm-f", s)] = {"test": {"20": summary(tight[s])}, "test_nll": 1.0}
    separated, _, _ = _optimizer_section(records, [0, 1, 2], config, "f")
    assert separated["beats_every_optimizer"]["20"]["over_seeds"]


def test_the_mlp_rows_pair_the_lstm_with_each_tuned_optimizer_over_seeds_by_hand():
    """The MLP section gives LSTM − optimizer per network and measure, paired over seeds: the
    mean of the per-seed differences ± t_{0.975, 2} · sd / √3 (t = 4.302653 from a table), and
    the target's verdict on the base network's mean log10 training loss."""
    from types import SimpleNamespace

    from stopwise.tasks.learned_optimizers.report import _mlp_section

    def test(log10_loss, loss, accuracy):
        return {
            "log10_loss": {"mean": log10_loss},
            "loss": {"mean": loss},
            "accuracy": {"mean": accuracy},
        }

    lstm = {0: (-2.0, 0.010, 0.95), 1: (-1.7, 0.020, 0.94), 2: (-2.2, 0.008, 0.96)}
    adam = {0: (-1.6, 0.025, 0.95), 1: (-1.6, 0.024, 0.96), 2: (-1.9, 0.012, 0.95)}
    records = {}
    for s in lstm:
        records[("lstm-mlp", s)] = {"variants": {"base": {"test": test(*lstm[s])}}}
        records[("hand-mlp", s)] = {"base": {"horizon": 100, "test": {"adam": test(*adam[s])}}}
    config = SimpleNamespace(
        optimizers=["adam"], mlp=SimpleNamespace(variants=[], dataset="digits", test_functions=5)
    )
    section, table, line = _mlp_section(records, [0, 1, 2], config)
    got = section["comparisons"]["base"]["log10_loss"]["adam"]
    differences = [-0.4, -0.1, -0.3]  # −2.0 − (−1.6), −1.7 − (−1.6), −2.2 − (−1.9)
    mean = sum(differences) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert got["mean"] == pytest.approx(mean)
    assert (got["lo"], got["hi"]) == pytest.approx((mean - half, mean + half), rel=1e-5)
    assert section["comparisons"]["base"]["accuracy"]["adam"]["mean"] == pytest.approx(-0.01 / 3)
    assert section["beats_every_optimizer"] is (mean + half < 0)
    assert "LSTM − Adam" in table and "step 100" in line


def test_the_benchmark_judges_the_mlp_target_by_each_interval_over_seeds(monkeypatch):
    """benchmarks/learned_optimizers.py's verdict for the MLP: met only when LSTM − every tuned
    optimizer (mean log10 training loss, base network) has its interval over seeds below zero;
    one seed by its value. (It judged no MLP target before the report paired the MLP row.)"""
    import importlib
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    script = importlib.import_module("learned_optimizers")
    sys.modules.pop("learned_optimizers", None)

    def results(**per_optimizer):
        comparisons = {"base": {"log10_loss": per_optimizer}}
        return {"families": {"mlp": {"optimizers": {"comparisons": comparisons}}}}

    below = {"mean": -0.3, "lo": -0.5, "hi": -0.1}
    across = {"mean": -0.16, "lo": -0.35, "hi": 0.02}
    one_seed = {"mean": -0.2, "lo": None, "hi": None}
    config = {"horizon": 100}
    key = "mlp: LSTM beats every tuned optimizer"
    assert script.targets(results(adam=below, sgd=below), config)[key]["met"] is True
    assert script.targets(results(adam=below, momentum=across), config)[key]["met"] is False
    assert script.targets(results(adam=one_seed), config)[key]["met"] is True


def test_a_depth_between_points_of_a_curve_that_doubles_back_is_interpolated_in_x_order():
    """A budget curve's mean steps may fall as its budget grows; np.interp needs sorted x."""
    from stopwise.tasks.learned_optimizers.report import _trained_depths

    def curve(pairs):
        return [{"mean_steps": x, "log10_gap": y, "nll": y} for x, y in pairs]

    doubling_back = curve([(10.0, -1.0), (80.0, -3.0), (70.0, -2.0)])  # sorted: 10, 70, 80
    flat = curve([(10.0, 0.0), (100.0, 0.0)])
    curves = {name: {"fixed_depth": flat, "curve": doubling_back} for name in ("act", "l2s")}
    records = {("depth-f", 0): {"trained": curve([(75.0, 0.0)])}}
    row = _trained_depths(records, [0], "f", curves)[0]
    assert row["log10_gap"]["act_curve"] == pytest.approx(-2.5)  # halfway from 70 (−2) to 80 (−3)


def test_a_depth_beyond_a_curves_last_point_gets_no_curve_value():
    """A stop curve that ends at 5.6 mean steps says nothing about 10 steps: np.interp would
    hold its last value there and print it as the curve at H = 10."""
    from stopwise.tasks.learned_optimizers.report import _trained_depths

    def curve(pairs):
        return [{"mean_steps": x, "log10_gap": y, "nll": y} for x, y in pairs]

    flat = curve([(1.0, 0.0), (20.0, 0.0)])
    curves = {
        "act": {"fixed_depth": flat, "curve": curve([(1.0, -1.0), (5.6, -2.0)])},
        "l2s": {"fixed_depth": flat, "curve": curve([(1.0, -1.0), (12.0, -3.0)])},
    }
    records = {("depth-f", 0): {"trained": curve([(10.0, 0.5)])}}
    row = _trained_depths(records, [0], "f", curves)[0]["log10_gap"]
    assert row["act_curve"] is None and row["act_minus_best_fixed"] is None
    assert row["l2s_curve"] == pytest.approx(-1 - 2 * 9 / 11)  # inside: interpolated
    assert row["l2s_minus_best_fixed"] == pytest.approx(row["l2s_curve"])  # best fixed is 0


def test_correlation_text_averages_the_defined_seeds_and_says_how_many():
    from stopwise.tasks.learned_optimizers.report import _correlations_text

    text = _correlations_text(
        {"act": {"gap": [0.2, None, 0.4], "n": [0.1, -0.3, 0.5]}, "l2s": {"gap": [None, None]}}
    )
    assert text == "act: gap +0.30 (2 of 3 seeds), n +0.10; l2s: gap — (0 of 2 seeds)"


def test_a_diverged_lstm_optimizer_is_named_in_the_report():
    """One of 30 test functions diverging lifts a seed's mean NLL to ~1e30 / 30, far below the
    cap itself: the note must name that seed, and the summary must not print 1e28 as an NLL."""
    import types

    from stopwise.tasks.learned_optimizers.metrics import DIVERGED
    from stopwise.tasks.learned_optimizers.report import _diverged_floor, _diverged_note, _nll_text

    config = types.SimpleNamespace(test_functions=30)
    one_of_30 = (29 * 0.5 + DIVERGED) / 30
    records = {
        ("lstm-quadratic", 0): {"test_nll": 0.5},
        ("lstm-quadratic", 1): {"test_nll": one_of_30},
        ("lstm-quadratic", 2): {"test_nll": DIVERGED * (1 - 1e-16)},  # all 30, rounded down
    }
    assert _diverged_note(records, [0], "quadratic", config) == ""
    note = _diverged_note(records, [0, 1, 2], "quadratic", config)
    assert "diverged** on test functions of seed(s) [1, 2]" in note and "not measured" in note
    floor = _diverged_floor(config, [0, 1, 2])
    mean = (0.5 + one_of_30 + DIVERGED) / 3
    assert _nll_text(0.12345, floor) == "0.1235" and _nll_text(mean, floor).startswith("diverged")


def test_regression_draws_follow_the_stated_prior_and_noise_precisions():
    """θ* ~ N(0, α⁻¹ I₂) and ε_n ~ N(0, β⁻¹) per function: over 4,000 functions the sample
    variance of θ* is 1/α (α = 4, off 1 by far), and β·ε² averages 1 over the ~100,000 real
    observations (1/β would leave a mean of E[1/β] ≈ 0.3 on β ∈ [1, 25])."""
    family = RegressionFamily(prior_precision=4.0)
    functions = family.sample(4000, torch.Generator().manual_seed(0))
    theta = functions["theta_star"]
    assert float(theta.var()) == pytest.approx(0.25, rel=0.05)
    assert float(theta.mean()) == pytest.approx(0.0, abs=0.02)
    x, y, mask = functions["x"], functions["y"], functions["mask"]
    noise = (y - theta[:, :1] - theta[:, 1:] * x) * mask  # ε on the real observations
    scaled = (functions["beta"].unsqueeze(-1) * noise**2).sum() / mask.sum()
    assert float(scaled) == pytest.approx(1.0, rel=0.03)


def test_reaching_a_negative_reference_nll_allows_the_tolerance_of_its_magnitude():
    """The regression NLL is negative where β > 2π: "reaches the reference" means mean NLL ≤
    reference + tolerance·|reference|, here −1 + 0.1 = −0.9, so two steps (−0.95) reach it
    and one (−0.5) does not (reference·(1 + tolerance) = −1.1 would leave no rule reaching)."""
    n, T = 4, 4
    losses = torch.tensor([-0.5, -0.95, -0.99, -1.0], dtype=torch.float64).repeat(n, 1)
    scores = torch.arange(T, dtype=torch.float64).repeat(n, 1)  # threshold k: stop at step k+1
    data = StopData(losses, losses + 1.001, scores, {})
    setting = StopEvaluation([1e-3], 2, -1.0, -1.0, 0.1)
    record = evaluate_stop(data, data, {"one": 0.0, "two": 1.0}, None, setting)
    reach = record["reach"]
    assert reach is not None
    assert reach["val_steps"] == pytest.approx(2.0)
    assert reach["steps"] == pytest.approx(2.0) and reach["nll"] == pytest.approx(-0.95)
    assert reach["reaches_reference"] is True


def test_quadratic_difficulty_is_the_condition_number_of_the_hessian():
    """f = ‖Wθ − y‖² has Hessian 2WᵀW: for W = diag(1, 3) its condition number is 9 (W's is 3),
    and the initial gap f(0) − 0 is ‖y‖²."""
    family = QuadraticFamily(2)
    functions = {
        "W": torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)).unsqueeze(0),
        "y": torch.tensor([[1.0, 2.0]], dtype=torch.float64),
    }
    difficulty = family.difficulty(functions)
    assert float(difficulty["condition_number"][0]) == pytest.approx(9.0)
    assert float(difficulty["initial_gap"][0]) == pytest.approx(5.0)


def test_optimizer_run_features_by_hand_on_a_two_dimensional_quadratic():
    """f(θ) = ‖θ − y‖² with y = (3, 4) from θ₀ = 0 by SGD at lr 0.25: g₀ = −2y = (−6, −8),
    ‖g₀‖₂ = 10 (the max-norm would read 8), θ₁ = y/2; then f₁ = 6.25, g₁ = (−3, −4),
    ‖g₁‖₂ = 5, improvement f₀ − f₁ = 18.75. At step 0 the improvement reads 1e12."""
    family = QuadraticFamily(2)
    functions = {
        "W": torch.eye(2, dtype=torch.float64).unsqueeze(0),
        "y": torch.tensor([[3.0, 4.0]], dtype=torch.float64),
    }
    run = OptimizerRun(family, HandDesigned("sgd", 0.25), 2)
    with torch.no_grad():
        trajectory = unroll(run, functions, with_features=True)
    features = trajectory.features[0]
    assert features[0].tolist() == pytest.approx([25.0, 1.0, 12.0, 0.0])
    assert features[1].tolist() == pytest.approx([6.25, math.log10(5.0), math.log10(18.75), 0.0])
    assert trajectory.predictions[0, 0].tolist() == pytest.approx([1.5, 2.0])


def test_summary_is_the_normal_interval_of_the_mean_by_hand():
    """mean ± 1.96·sd/√n with the sample standard deviation: [1, 2, 3, 4] has mean 2.5,
    sd √(5/3), so the half-width is 1.96·√(5/3)/2."""
    from stopwise.tasks.learned_optimizers.metrics import summary

    out = summary(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    half = 1.96 * math.sqrt(5 / 3) / 2
    assert out["mean"] == 2.5 and out["n"] == 4
    assert out["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert out["lo"] == pytest.approx(2.5 - half) and out["hi"] == pytest.approx(2.5 + half)


@pytest.mark.parametrize("update", ["additive", "scaled_rmsprop"])
def test_learned_optimizer_resumes_a_float64_model_from_its_state_dict(update):
    """torch casts an optimizer's floating state to each parameter's dtype on load; the LSTM
    state must come back in the network's dtype, and the resumed steps equal uninterrupted ones."""
    torch.manual_seed(0)
    net = LSTMOptimizerNet(output_scale=0.1, update=update)
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randn(16, 1, dtype=torch.float64)
    models = [nn.Linear(3, 1).double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())

    def steps(model, optimizer, n):
        for _ in range(n):
            optimizer.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            optimizer.step()

    whole = LearnedOptimizer(models[0].parameters(), net)
    steps(models[0], whole, 6)
    first = LearnedOptimizer(models[1].parameters(), net)
    steps(models[1], first, 3)
    resumed = LearnedOptimizer(models[1].parameters(), net)
    resumed.load_state_dict(first.state_dict())
    steps(models[1], resumed, 3)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
