"""The sparse-recovery step models against independent references: ISTA and FISTA against plain
per-sample loops, LISTA from ISTA equals ISTA, ALISTA's analytic weight against its defining
optimisation, LISTA-CP-SS from ALISTA equals ALISTA, thresholds against loops, multiply-add
counts against torch's FLOP counter, and the stop policy's features and summaries."""

import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from stopwise.steps import unroll
from stopwise.tasks.sparse_recovery.data import fixed_split, sensing_matrix
from stopwise.tasks.sparse_recovery.models import (
    ALISTA,
    FISTA,
    ISTA,
    LISTA,
    LISTACPSS,
    StopPolicy,
    analytic_weight,
    soft_threshold,
    support_sizes,
    support_threshold,
)


@pytest.fixture(scope="module")
def problem():
    A = sensing_matrix(12, 24, 5.0, torch.Generator().manual_seed(4))
    split = fixed_split(A, 5, 0.2, [20.0, 30.0, 40.0], torch.Generator().manual_seed(1))
    return A, split


def soft_reference(v: float, theta: float) -> float:
    if v > theta:
        return v - theta
    if v < -theta:
        return v + theta
    return 0.0


def ista_reference(A, y, L, lam, steps, fista=False):
    """Daubechies et al. / Beck & Teboulle, one sample, float64, explicit loops."""
    A = np.asarray(A, dtype=np.float64)
    m, n = A.shape
    x = [0.0] * n
    x_prev = [0.0] * n
    tau = 1.0
    z = list(x)
    out = []
    for _ in range(steps):
        residual = [sum(A[i, j] * z[j] for j in range(n)) - y[i] for i in range(m)]
        grad = [sum(A[i, j] * residual[i] for i in range(m)) for j in range(n)]
        x_new = [soft_reference(z[j] - grad[j] / L, lam / L) for j in range(n)]
        if fista:
            tau_next = (1 + math.sqrt(1 + 4 * tau * tau)) / 2
            z = [x_new[j] + (tau - 1) / tau_next * (x_new[j] - x[j]) for j in range(n)]
            tau = tau_next
        else:
            z = x_new
        x_prev, x = x, x_new
        out.append(list(x))
    del x_prev
    return out


@pytest.mark.parametrize("cls, fista", [(ISTA, False), (FISTA, True)])
def test_ista_and_fista_match_a_plain_loop(problem, cls, fista):
    A, split = problem
    L, lam, steps = 3.0, 0.05, 12
    trajectory = unroll(cls(A.double(), steps, L, lam), split.y[:4].double()).predictions
    for row in range(4):
        reference = ista_reference(A, split.y[row].tolist(), L, lam, steps, fista)
        assert torch.allclose(
            trajectory[row], torch.tensor(reference, dtype=torch.float64), atol=1e-10
        )


def test_fista_beats_ista_and_both_decrease_the_lasso_objective(problem):
    A, split = problem
    A, y = A.double(), split.y.double()
    L = float(torch.linalg.matrix_norm(A, 2) ** 2)

    def objective(x):
        return 0.5 * ((x @ A.T - y) ** 2).sum(-1) + 0.05 * x.abs().sum(-1)

    ista = unroll(ISTA(A, 30, L, 0.05), y).predictions
    fista = unroll(FISTA(A, 30, L, 0.05), y).predictions
    values = torch.stack([objective(ista[:, t]) for t in range(30)], 1)
    assert bool((values[:, 1:] <= values[:, :-1] + 1e-12).all())  # ISTA with L ≥ ‖A‖² is monotone
    assert float(objective(fista[:, -1]).sum()) <= float(objective(ista[:, -1]).sum())


def test_lista_initialised_from_ista_is_ista(problem):
    A, split = problem
    ista = unroll(ISTA(A, 9, 2.5, 0.1), split.y).predictions
    lista = unroll(LISTA(A, 9, 2.5, 0.1), split.y).predictions
    assert torch.allclose(lista, ista, atol=1e-5)
    model = LISTA(A, 9, 2.5, 0.1)
    assert len(model.wx) == 8 and len(model.wb) == 9  # layer 0 acts on x0 = 0: no W_x


def test_lista_runs_each_layer_with_its_own_weights_as_a_plain_loop(problem):
    """Trained LISTA has different W_x, W_b and θ per layer: x_{t+1} = η_{θ_t}(W_x^t x_t +
    W_b^t y) with layer t's own weights, written out one sample at a time."""
    A, split = problem
    model = LISTA(A, 4, 2.5, 0.1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for w in [*model.wx, *model.wb]:
            w.add_(0.05 * torch.randn(w.shape, generator=g, dtype=w.dtype))
        model.theta.mul_(torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=model.theta.dtype))
    y = split.y[:3]
    got = unroll(model, y).predictions.detach()  # (B, T, n)
    for i in range(3):
        x = [0.0] * A.shape[1]
        for t in range(4):
            wb, theta = model.wb[t].detach().tolist(), float(model.theta[t].detach())
            drive = [sum(y[i, k].item() * wb[k][j] for k in range(len(wb))) for j in range(len(x))]
            if t > 0:
                wx = model.wx[t - 1].detach().tolist()
                drive = [
                    d + sum(x[k] * wx[k][j] for k in range(len(x))) for j, d in enumerate(drive)
                ]
            x = [soft_reference(v, theta) for v in drive]
            assert got[i, t].tolist() == pytest.approx(x, abs=1e-4)


def test_support_selection_keeping_every_entry_passes_all_above_theta_unshrunk():
    """keep = n (LISTA-CP-SS's p_max = 1 allows it): every entry above θ is trusted, the rest
    soft-thresholded, as a plain loop does."""
    v = torch.tensor([[0.5, -2.0, 0.1, 0.0]], dtype=torch.float64)
    expected = [
        value if abs(value) > 0.2 else soft_reference(value, 0.2) for value in v[0].tolist()
    ]
    assert support_threshold(v, 0.2, keep=4)[0].tolist() == pytest.approx(expected)


def test_analytic_weight_solves_its_defining_problem():
    """W = argmin ‖WᵀA‖_F² s.t. w_iᵀa_i = 1, solved column by column as a least-squares problem
    over the affine set {w : a_iᵀw = 1} = w0 + null(a_iᵀ), independently of (AAᵀ)⁻¹."""
    A = torch.randn(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    W = analytic_weight(A)
    assert torch.allclose((W * A).sum(0), torch.ones(9, dtype=torch.float64), atol=1e-12)
    for i in range(9):
        a = A[:, i]
        w0 = a / a.dot(a)
        null = torch.linalg.svd(a.view(1, -1))[2][1:].T  # (5, 4) basis of {d : aᵀd = 0}
        z = torch.linalg.lstsq(A.T @ null, -(A.T @ w0)).solution
        w = w0 + null @ z
        assert torch.allclose(W[:, i], w, atol=1e-10)
        # no feasible perturbation lowers the objective
        best = float((A.T @ W[:, i]).square().sum())
        for _ in range(5):
            d = null @ torch.randn(4, dtype=torch.float64)
            assert float((A.T @ (W[:, i] + 1e-3 * d)).square().sum()) >= best


def test_thresholds_match_loops():
    generator = torch.Generator().manual_seed(2)
    v = torch.randn(7, 11, generator=generator, dtype=torch.float64)
    theta = 0.4
    expected = [[soft_reference(value, theta) for value in row] for row in v.tolist()]
    assert torch.allclose(soft_threshold(v, theta), torch.tensor(expected, dtype=torch.float64))
    keep = 3
    out = support_threshold(v, theta, keep)
    for r, row in enumerate(v.tolist()):
        order = sorted(range(11), key=lambda j: -abs(row[j]))[:keep]
        for j, value in enumerate(row):
            kept = j in order and abs(value) > theta
            assert float(out[r, j]) == pytest.approx(
                value if kept else soft_reference(value, theta)
            )
    # the threshold's gradients: ∂η/∂θ = −sign(η), ∂η/∂v = 1{|v| > θ}
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    vv = v.clone().requires_grad_(True)
    torch.autograd.gradcheck(lambda a, b: soft_threshold(a, b), (vv, t))
    torch.autograd.gradcheck(lambda a, b: support_threshold(a, b, keep), (vv, t))
    assert float(soft_threshold(v, -1.0).sub(v).abs().max()) == 0.0  # θ < 0 acts as 0


def test_support_sizes_follow_the_schedule():
    """Hand values of ⌈n · min(p·(t+1), p_max)⌉: fractions round up (1.2 → 2, 2.4 → 3, the cap
    3.5 → 4; round or floor give 1, 2, ...), and products that are whole numbers up to float
    noise (0.07 · 100 = 7.000000000000001) stay whole."""
    assert support_sizes(10, 5, 0.12, 0.35) == [2, 3, 4, 4, 4]
    assert support_sizes(100, 5, 0.07, 1.0) == [7, 14, 21, 28, 35]
    assert support_sizes(500, 20, 0.012, 0.13)[:5] == [6, 12, 18, 24, 30]
    assert support_sizes(500, 20, 0.012, 0.13)[10:] == [65] * 10  # 0.132 capped at 0.13: 65
    assert support_sizes(500, 20, 0.012, 0.13)[9] == 60


def support_selection_reference(A, y, weights, thetas, keep):
    """LISTA-CP-SS (Chen et al. 2018, Eq. 13) / ALISTA (Liu et al. 2019, Eq. 16), one sample,
    float64, explicit loops: v = x_t − W_tᵀ(A x_t − y); the keep[t] entries of largest |v|
    that also exceed θ_t pass unshrunk, the others are soft-thresholded by θ_t."""
    A = np.asarray(A, dtype=np.float64)
    m, n = A.shape
    x = [0.0] * n
    out = []
    for W, theta, p in zip(weights, thetas, keep, strict=True):
        W = np.asarray(W, dtype=np.float64)
        residual = [sum(A[i, j] * x[j] for j in range(n)) - y[i] for i in range(m)]
        v = [x[j] - sum(W[i, j] * residual[i] for i in range(m)) for j in range(n)]
        largest = sorted(range(n), key=lambda j: -abs(v[j]))[:p]
        x = [
            v[j] if j in largest and abs(v[j]) > theta else soft_reference(v[j], theta)
            for j in range(n)
        ]
        out.append(list(x))
    return out


def test_support_selection_layers_match_a_plain_loop(problem):
    """ALISTA (W_t = γ_t W, W analytic) and LISTA-CP-SS (a different W_t per layer) against
    :func:`support_selection_reference`; the support size changes from layer to layer
    (0, 2, 2, 5, 9), the last layer's large θ puts some of its 9 largest entries below θ (set
    to 0, not passed), and each layer's residual r = A x_{t+1} − y is in the state."""
    A, split = problem
    A = A.double()
    y = split.y[:3].double()
    keep = [0, 2, 2, 5, 9]
    gammas, thetas = [0.9, 0.7, 1.1, 0.8, 1.0], [0.12, 0.08, 0.05, 0.03, 0.3]
    alista = ALISTA(A, 5, 1.0, 0.1, keep)
    with torch.no_grad():
        alista.gamma.copy_(torch.tensor(gammas, dtype=torch.float64))
        alista.theta.copy_(torch.tensor(thetas, dtype=torch.float64))
    W = analytic_weight(A)
    g = torch.Generator().manual_seed(9)
    weights = [
        W * (0.6 + 0.6 * torch.rand(A.shape, generator=g, dtype=torch.float64)) for _ in range(5)
    ]
    cpss = LISTACPSS(A, weights, thetas, keep)
    for model, layer_weights in ((alista, [W * gm for gm in gammas]), (cpss, weights)):
        trajectory = unroll(model, y).predictions
        state = model.start(y)
        for t in range(5):
            state = model.advance(state, t)
            assert torch.allclose(state["r"], state["x"] @ A.T - y, atol=1e-12)
        lagged_differs = False
        for row in range(3):
            ws = [w.tolist() for w in layer_weights]
            reference = support_selection_reference(A, y[row].tolist(), ws, thetas, keep)
            assert torch.allclose(
                trajectory[row], torch.tensor(reference, dtype=torch.float64), atol=1e-10
            )
            lagged = support_selection_reference(A, y[row].tolist(), ws, thetas, [0] + keep[:-1])
            lagged_differs |= not np.allclose(reference, lagged, atol=1e-6)
        assert lagged_differs  # the data tell layer t's support size from layer t − 1's


def test_lista_cp_ss_from_alista_is_alista(problem):
    A, split = problem
    keep = support_sizes(A.shape[1], 6, 0.05, 0.2)
    alista = ALISTA(A, 6, 0.7, 0.05, keep)
    with torch.no_grad():
        alista.gamma.copy_(torch.linspace(0.5, 0.9, 6))
        alista.theta.copy_(torch.linspace(0.1, 0.01, 6))
    cpss = LISTACPSS.from_alista(alista)
    assert torch.allclose(
        unroll(alista, split.y).predictions, unroll(cpss, split.y).predictions, atol=1e-5
    )


def _counted_macs(model, y):
    """Multiply-adds per sample of each step, counted by torch's FLOP counter (2 per MAC)."""
    state = model.start(y)
    per_step = []
    for t in range(model.max_steps):
        with FlopCounterMode(display=False) as counter:
            state = model.advance(state, t)
        per_step.append(counter.get_total_flops() / 2 / y.shape[0])
    return per_step


def test_step_costs_are_the_multiply_adds_actually_run(problem):
    A, split = problem
    m, n = A.shape
    keep = support_sizes(n, 5, 0.05, 0.2)
    models = {
        "ista": ISTA(A, 5, 3.0, 0.1),
        "fista": FISTA(A, 5, 3.0, 0.1),
        "lista": LISTA(A, 5, 3.0, 0.1),
        "alista": ALISTA(A, 5, 0.6, 0.1, keep),
    }
    expected = {
        "ista": [m * n] + [2 * m * n] * 4,
        "fista": [m * n] + [2 * m * n] * 4,
        "lista": [m * n] + [n * n + n * m] * 4,
        "alista": [2 * m * n] * 5,
    }
    for name, model in models.items():
        layer = torch.diff(model.step_costs(), prepend=torch.zeros(1)).tolist()
        assert layer == expected[name], name
        assert _counted_macs(model, split.y) == expected[name], name
    # features: one multiply-add per squared entry of x_t and of x_t − x_{t−1} (or r where
    # carried), and of y once, at the first step
    assert models["lista"].feature_costs().tolist() == [m + 2 * n] + [2 * n] * 4
    assert models["alista"].feature_costs().tolist() == [2 * m + n] + [m + n] * 4
    # ... and at most 10% of a step at the paper's size (m = 250, n = 500, T = 20)
    big = sensing_matrix(250, 500, 5.0, torch.Generator().manual_seed(0))
    for model in (LISTA(big, 20, 3.0, 0.1), ALISTA(big, 20, 0.6, 0.1, [0] * 20)):
        per_step = float(model.step_costs()[-1]) / 20
        policy = StopPolicy(model.feature_dim, 20, hidden=(64,))
        assert float(model.feature_costs()[0]) + policy.macs() <= 0.02 * per_step


def _log_mean_square(v):
    return math.log(float((v.detach().double() ** 2).mean()) + 1e-12)


@pytest.mark.parametrize("name", ["lista", "alista", "cpss"])
def test_policy_features_are_log_norms_of_the_state_by_hand(problem, name):
    A, split = problem
    m, n = A.shape
    keep = support_sizes(n, 4, 0.05, 0.2)
    model = {
        "lista": LISTA(A, 4, 3.0, 0.1),
        "alista": ALISTA(A, 4, 0.6, 0.1, keep),
        "cpss": LISTACPSS.from_alista(ALISTA(A, 4, 0.6, 0.1, keep)),
    }[name]
    state = model.start(split.y)
    estimates = [torch.zeros(split.y.shape[0], n)]
    for t in range(4):
        state = model.advance(state, t)
        estimates.append(state["x"])
        prediction, features = model.observe(state, t)
        assert torch.equal(prediction, state["x"]) and torch.equal(
            features, model.features(state, t)
        )
        assert features.shape == (split.y.shape[0], model.feature_dim)
        for i in range(split.y.shape[0]):
            y, x, x_prev = split.y[i], estimates[-1][i], estimates[-2][i]
            # the residual models see log ‖y − A x_t‖²/m, LISTA log ‖x_t − x_{t−1}‖²/n
            last = x - x_prev if name == "lista" else y - A @ x
            expected = [_log_mean_square(y), _log_mean_square(x), _log_mean_square(last)]
            assert features[i].tolist() == pytest.approx(expected, abs=1e-4), (name, t, i)
    assert len(model.feature_names) == model.feature_dim == 3


def test_stop_policy_is_an_mlp_on_standardised_features_and_a_one_hot_step(problem):
    A, split = problem
    torch.manual_seed(0)
    policy = StopPolicy(3, 4, hidden=(8, 5))
    pool = torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(0)) * 5 + 2
    policy.standardise(pool)
    flat = pool.reshape(-1, 3).double()
    assert torch.allclose(policy.shift.double(), flat.mean(0), atol=1e-5)
    assert torch.allclose(policy.scale.double(), flat.std(0), atol=1e-5)
    features = torch.randn(6, 3)

    def reference(t):  # the unfolded network: Linear on [(f − shift)/scale, one_hot(t)]
        step = torch.nn.functional.one_hot(torch.full((6,), t), 4).float()
        h = torch.cat([(features - policy.shift) / policy.scale, step], dim=-1)
        for layer in policy.layers:
            h = torch.relu(h @ layer.weight.T + layer.bias)
        return (h @ policy.out.weight.T + policy.out.bias).squeeze(-1)

    for t in range(4):
        torch.testing.assert_close(policy(features, t), reference(t))
    steps = torch.tensor([0, 3, 1, 2, 2, 0])
    per_row = torch.stack([reference(int(t))[i] for i, t in enumerate(steps)])
    torch.testing.assert_close(policy(features, steps), per_row)
    assert policy.macs() == 3 * 8 + 8 * 5 + 5  # one-hot and standardisation folded in
    with FlopCounterMode(display=False) as counter:
        policy(torch.randn(1000, 3), 2)
    assert counter.get_total_flops() / 2 / 1000 == pytest.approx(policy.macs(), rel=0.01)
    with pytest.raises(ValueError, match="shape \\(B, 3\\)"):
        policy(features[:, :2], 0)
    with pytest.raises(ValueError, match="shape \\(B, m=12\\)"):
        LISTA(A, 4, 3.0, 0.1).start(torch.zeros(3, 5))
