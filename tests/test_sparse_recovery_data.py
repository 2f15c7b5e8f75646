"""The sparse-recovery protocol (L2S §5.1) and NMSE, against hand computations and the stated
definitions: singular values, column norms, signals, per-sample SNR, fixed splits."""

import math

import pytest
import torch

from stopwise.tasks.sparse_recovery.data import (
    add_noise,
    fixed_split,
    sample_batch,
    sample_signals,
    sensing_matrix,
    target_singular_values,
    with_singular_values,
)
from stopwise.tasks.sparse_recovery.metrics import (
    error_columns,
    nmse_columns,
    nmse_db,
    squared_errors,
    step_losses,
)


def test_target_singular_values_are_log_spaced_with_the_stated_energy_and_condition():
    s = target_singular_values(250, 500, 5.0)
    assert s.shape == (250,)
    assert float((s * s).sum()) == pytest.approx(500.0, rel=1e-12)
    assert float(s[0] / s[-1]) == pytest.approx(5.0, rel=1e-12)
    ratios = s[1:] / s[:-1]  # log-spaced: a constant ratio 5^(-1/249)
    assert torch.allclose(ratios, torch.full_like(ratios, 5.0 ** (-1 / 249)), rtol=1e-12)


def test_matrix_before_normalisation_has_exactly_the_target_singular_values():
    generator = torch.Generator().manual_seed(3)
    gaussian = torch.randn(30, 60, generator=generator, dtype=torch.float64) / math.sqrt(30)
    target = target_singular_values(30, 60, 5.0)
    B = with_singular_values(gaussian, target)
    assert torch.allclose(torch.linalg.svdvals(B), target, rtol=1e-10)
    # Same singular vectors as the Gaussian draw: only the spectrum was replaced.
    U, _, Vh = torch.linalg.svd(gaussian, full_matrices=False)
    assert torch.allclose(U.T @ B @ Vh.T, torch.diag(target), atol=1e-10)


def generator(seed):
    return torch.Generator().manual_seed(seed)


def test_sensing_matrix_has_unit_columns_and_depends_only_on_the_stream():
    A = sensing_matrix(250, 500, 5.0, generator(0))
    assert A.shape == (250, 500) and A.dtype == torch.float32
    assert torch.allclose(A.norm(dim=0), torch.ones(500), atol=1e-6)
    assert torch.equal(A, sensing_matrix(250, 500, 5.0, generator(0)))
    assert not torch.equal(A, sensing_matrix(250, 500, 5.0, generator(1)))
    # Column normalisation keeps the conditioning close to the target's 5.
    s = torch.linalg.svdvals(A.double())
    assert 4.0 < float(s[0] / s[-1]) < 6.5


def test_signals_are_bernoulli_gaussian():
    generator = torch.Generator().manual_seed(0)
    x = sample_signals(4000, 500, 0.1, generator)
    support = x != 0
    assert float(support.float().mean()) == pytest.approx(0.1, abs=0.003)
    values = x[support]
    assert float(values.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(values.std()) == pytest.approx(1.0, abs=0.01)


def test_noise_has_the_per_sample_snr_exactly():
    clean = torch.randn(6, 250, generator=torch.Generator().manual_seed(1)) * torch.arange(
        1.0, 7.0
    ).unsqueeze(-1)
    snr = torch.tensor([20.0, 30.0, 40.0, 20.0, 30.0, 40.0])
    noisy = add_noise(clean, snr, torch.Generator().manual_seed(9))
    standard = torch.randn(6, 250, generator=torch.Generator().manual_seed(9))
    for i in range(6):
        mean = sum(clean[i].tolist()) / 250
        std = math.sqrt(sum((v - mean) ** 2 for v in clean[i].tolist()) / 250)  # over m entries
        sigma = std * 10 ** (-float(snr[i]) / 20)
        assert torch.allclose(noisy[i] - clean[i], sigma * standard[i], atol=1e-5)


def test_training_snr_is_uniform_over_the_levels_and_noise_follows_it():
    A = sensing_matrix(50, 100, 5.0, generator(0))
    batch = sample_batch(A, 6000, 0.1, [20.0, 30.0, 40.0], torch.Generator().manual_seed(2))
    assert batch.y.shape == (6000, 50) and batch.x.shape == (6000, 100)
    for level in (20.0, 30.0, 40.0):
        rows = batch.snr == level
        assert int(rows.sum()) == pytest.approx(2000, abs=150)
        clean = batch.x[rows] @ A.T
        keep = clean.std(dim=-1) > 0
        noise = batch.y[rows][keep] - clean[keep]
        measured = 20 * torch.log10(clean[keep].std(-1, correction=0) / noise.std(-1, correction=0))
        assert float(measured.mean()) == pytest.approx(level, abs=0.2)


def test_fixed_split_blocks_and_stream():
    A = sensing_matrix(50, 100, 5.0, generator(0))
    split = fixed_split(A, 7, 0.1, [20.0, 30.0, 40.0], generator(5))
    assert split.snr.tolist() == [20.0] * 7 + [30.0] * 7 + [40.0] * 7
    again = fixed_split(A, 7, 0.1, [20.0, 30.0, 40.0], generator(5))
    assert all(torch.equal(a, b) for a, b in zip(split, again, strict=True))
    other = fixed_split(A, 7, 0.1, [20.0, 30.0, 40.0], generator(6))
    assert not torch.equal(split.x, other.x)


def test_nmse_is_a_ratio_of_means_by_hand():
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    estimate = torch.tensor([[0.5, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 3.0]])
    # errors: 0.25, 1, 0; energies: 1, 4, 9 -> (1.25/3) / (14/3) = 1.25/14
    errors = squared_errors(estimate, x)
    assert errors.tolist() == [0.25, 1.0, 0.0]
    assert nmse_db(errors, (x**2).sum(-1)) == pytest.approx(10 * math.log10(1.25 / 14))
    # not the mean of per-sample ratios (0.25 + 0.25 + 0) / 3
    assert nmse_db(errors, (x**2).sum(-1)) != pytest.approx(10 * math.log10(0.5 / 3))
    snr = torch.tensor([20.0, 20.0, 30.0])
    columns = nmse_columns(estimate, x, snr, [20.0, 30.0])
    assert columns["mixed"] == pytest.approx(10 * math.log10(1.25 / 14))
    assert columns["20dB"] == pytest.approx(10 * math.log10(1.25 / 5))
    assert columns["30dB"] == -math.inf
    diverged = torch.tensor([0.25, math.inf, 0.0])  # and inf − inf gives NaN: the worst, not −inf
    assert nmse_db(diverged, (x**2).sum(-1)) == math.inf
    assert nmse_db(torch.tensor([0.25, math.nan, 0.0]), (x**2).sum(-1)) == math.inf
    with pytest.raises(ValueError, match="no sample has SNR 40"):
        error_columns(errors, (x**2).sum(-1), snr, [20.0, 40.0])
    with pytest.raises(ValueError, match="must match"):
        squared_errors(estimate[:, :2], x)


def test_step_losses_sum_over_coordinates():
    predictions = torch.arange(12.0).view(1, 3, 4)
    target = torch.ones(1, 4)
    expected = [[sum((v - 1) ** 2 for v in predictions[0, t].tolist()) for t in range(3)]]
    assert step_losses(predictions, target).tolist() == expected


def test_problem_splits_come_from_their_own_streams_and_share_no_signal():
    """make_problem: validation from the "validation" stream, test from the "test" stream, so
    the held-out test split is not the validation split (no signal x* in both) and reseeding
    one stream changes that split only."""
    from types import SimpleNamespace

    from stopwise.tasks.sparse_recovery.data import make_problem

    config = SimpleNamespace(m=12, n=24, condition=5.0, sparsity=0.2, snrs=[20.0, 40.0], per_snr=6)

    def streams(seeds):
        return lambda name: torch.Generator().manual_seed(seeds[name])

    base = {"sensing-matrix": 1, "validation": 2, "test": 3}
    problem = make_problem(config, streams(base))
    val, test = problem.val, problem.test.open()
    assert val.x.shape == test.x.shape == (12, 24)
    # no signal of the test split appears in validation
    assert not any(torch.equal(a, b) for a in test.x for b in val.x)
    assert not torch.equal(val.y, test.y)
    # each split is the draw of its own named stream: reseeding "test" leaves validation as is
    other = make_problem(config, streams({**base, "test": 4}))
    assert torch.equal(other.val.x, val.x) and torch.equal(other.val.y, val.y)
    assert not torch.equal(other.test.open().x, test.x)
    other = make_problem(config, streams({**base, "validation": 5}))
    assert torch.equal(other.test.open().x, test.x)
    assert not torch.equal(other.val.x, val.x)
