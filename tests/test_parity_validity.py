"""Issue 12 on parity: each method's learning-rate grid (chosen on validation, never on test),
ACT's share of training inputs halting at step 1 by k, and PonderNet's renormalised-q rules
checked against plain loops."""

import math

import pytest
import torch

from stopwise.experiments import get_experiment, resolve_config
from stopwise.tasks.parity import METHODS, ParityGRU, infer, sample_parity
from stopwise.tasks.parity.data import first_training_batches
from stopwise.tasks.parity.experiment import jobs
from stopwise.tasks.parity.methods import act_halting_steps, renormalised_stop
from stopwise.tasks.parity.metrics import share_by_k
from stopwise.tasks.parity.report import halting_at_step_1_table, summarize
from stopwise.training import GeneratedBatches


def config(*overrides):
    return resolve_config(get_experiment("parity"), "tiny", list(overrides))[0]


def test_each_method_runs_its_own_learning_rate_grid():
    planned = jobs(config("lr=0.01,0.02", "act_lr=0.001,0.002,0.003"))
    lrs = {}
    for job in planned:
        lrs.setdefault(job.params["method"], set()).add(job.params["lr"])
        assert job.name.removesuffix("-train").endswith(f"-lr{job.params['lr']:g}")
        assert "lr" not in job.keys and "act_lr" not in job.keys  # the lr is a param of the job
    assert lrs.pop("act") == {0.001, 0.002, 0.003}
    assert set(lrs) == set(METHODS) - {"act"}
    assert all(values == {0.01, 0.02} for values in lrs.values())
    assert len({job.name for job in planned}) == len(planned)


def _row(lr, seed, test, validation, value=0.0001, steps=3.0):
    """An ACT job row as the report sees it."""
    return {
        "id": f"act-{value:g}-lr{lr:g}-s{seed}",
        "method": "act",
        "value": value,
        "lr": lr,
        "seed": seed,
        "variant": "",
        "rule": "act",
        "accuracy": test,
        "interpolation": test,
        "extrapolation": None,
        "mean_steps": steps,
        "spearman": None,
        "per_k": [{"k": 1, "count": 1, "accuracy": test, "mean_steps": steps}],
        "steps_run": steps,
        "validation_accuracy": validation,
        "validation_steps": steps,
        "train_seconds": 1.0,
    }


def test_the_learning_rate_is_chosen_on_validation_never_on_test():
    # lr 1e-3 is best on validation and worst on test; lr 3e-3 is best on test. τ = 0.01 at
    # lr 3e-4 is second on validation: the choice runs over (τ, lr) pairs.
    rows = []
    for seed in (0, 1, 2):
        rows.append(_row(0.0001, seed, test=0.95, validation=0.70))
        rows.append(_row(0.0003, seed, test=0.96, validation=0.85, value=0.01))
        rows.append(_row(0.001, seed, test=0.60, validation=0.90))
        rows.append(_row(0.003, seed, test=0.99, validation=0.80))
    best = [(line["value"], line["lr"]) for line in summarize(rows) if line["best"]]
    assert best == [(0.0001, 0.001)]
    # swap the two splits: the choice follows validation
    for row in rows:
        row["interpolation"], row["validation_accuracy"] = (
            row["validation_accuracy"],
            row["accuracy"],
        )
    best = [(line["value"], line["lr"]) for line in summarize(rows) if line["best"]]
    assert best == [(0.0001, 0.003)]


def test_share_by_k_by_hand():
    flags = torch.tensor([True, False, True, True, False])
    k = torch.tensor([3, 3, 1, 3, 2])
    share = share_by_k(flags, k)
    assert share["inputs"] == 5 and share["overall"] == pytest.approx(3 / 5)
    assert share["per_k"] == [
        {"k": 1, "count": 1, "share": 1.0},
        {"k": 2, "count": 1, "share": 0.0},
        {"k": 3, "count": 3, "share": pytest.approx(2 / 3)},
    ]


def test_first_training_batches_are_the_batches_the_training_loop_draws():
    c = config("batch_size=7")
    seed = 1234

    def sample(batch, generator):
        x, y, _ = sample_parity(batch, c.n, c.train_k, generator)
        return x, y

    loop = GeneratedBatches(sample, c.batch_size, seed)
    drawn = first_training_batches(c, torch.Generator().manual_seed(seed), 3)
    assert drawn.x.shape == (21, c.n)
    for step in range(3):
        x, y = loop(step)
        assert torch.equal(drawn.x[7 * step : 7 * step + 7], x)
        assert torch.equal(drawn.y[7 * step : 7 * step + 7], y)
    assert torch.equal(drawn.k, (drawn.x != 0).sum(-1))


def test_act_halting_steps_flag_the_inputs_stopped_at_step_one():
    torch.manual_seed(0)
    x = sample_parity(50, 8, (1, 8), torch.Generator().manual_seed(1)).x

    def steps(bias):
        model = ParityGRU(8, 16, 5, halting_bias=bias)
        torch.nn.init.zeros_(model.halting.linear.weight)  # h_t = σ(bias) at every step
        return act_halting_steps(model, x, 0.01)

    assert (steps(5.0) == 1).all()  # h₁ = σ(5) ≈ 0.993 ≥ 1 − ε: the dead zone at step 1
    assert (steps(4.0) == 2).all()  # h₁ = σ(4) ≈ 0.982 < 0.99 ≤ h₁ + h₂
    assert (steps(-8.0) == 5).all()  # Σ h never reaches 1 − ε: every input runs all 5 steps


def test_halting_at_step_1_table_lists_each_act_setting_per_k():
    rows = [_row(lr, seed, 0.9, 0.9) for lr in (0.001, 0.003) for seed in (0, 1)]
    for row, share in zip(rows, [0.0, 0.5, 0.25, 0.75], strict=True):
        row["halting_at_step_1"] = {
            "inputs": 4,
            "overall": share,
            "per_k": [{"k": 1, "count": 2, "share": share}, {"k": 2, "count": 2, "share": 1.0}],
        }
    table = halting_at_step_1_table(summarize(rows))
    assert "| τ=0.0001, lr=0.001 | 25.0 | 25 | 100 |" in table
    assert "| τ=0.0001, lr=0.003 | 50.0 | 50 | 100 |" in table


def renormalised_q_loop(logits: list[float]) -> list[float]:
    """q(t) = λ_t ∏_{τ<t}(1 − λ_τ) / (1 − ∏_{τ≤N}(1 − λ_τ)), written out with plain floats."""
    lam = [1 / (1 + math.exp(-z)) for z in logits]
    unnormalised, survive = [], 1.0
    for value in lam:
        unnormalised.append(value * survive)
        survive *= 1 - value
    return [u / (1 - survive) for u in unnormalised]


def first_reaching(q: list[float], level: float) -> int:
    total = 0.0
    for t, value in enumerate(q):
        total += value
        if total >= level:
            return t
    return len(q) - 1


def test_renormalised_rules_match_a_plain_loop():
    z = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1.5
    u = torch.rand(300, generator=torch.Generator().manual_seed(5)).tolist()
    median = renormalised_stop(z, "median-q").tolist()
    sampled = renormalised_stop(z, "sample-q", sample_seed=5).tolist()
    for row, logits in enumerate(z.tolist()):
        q = renormalised_q_loop(logits)
        assert median[row] == first_reaching(q, 0.5)
        assert sampled[row] == first_reaching(q, u[row])
    with pytest.raises(ValueError, match="renormalised"):
        renormalised_stop(z, "median")


def test_sampled_renormalised_stops_follow_q_not_the_unnormalised_process():
    # λ = σ(−2) ≈ 0.12 at each of 3 steps: the unnormalised process stops at t with
    # λ(1 − λ)^t and runs on past step 3 with ∏(1 − λ) ≈ 0.68 (at inference: stops at the
    # last step); q puts (1 − λ)^t / Σ on each step: ≈ 0.37, 0.33, 0.29.
    z = torch.full((40000, 3), -2.0)
    q = torch.tensor(renormalised_q_loop([-2.0] * 3))
    counts = torch.bincount(renormalised_stop(z, "sample-q", sample_seed=1), minlength=3)
    assert torch.allclose(counts / 40000, q, atol=0.01)  # 4 sd of a share at n = 40,000 ≈ 0.01
    torch.manual_seed(0)
    model = ParityGRU(4, 8, 3, halting_bias=-2.0).eval()
    torch.nn.init.zeros_(model.halting.linear.weight)
    x = sample_parity(4000, 4, (1, 4), torch.Generator().manual_seed(2)).x
    _, unnormalised = infer("sample", model, model.halting, x, sample_seed=3)
    _, renormalised = infer("sample-q", model, model.halting, x, sample_seed=3)
    assert (unnormalised == 2).float().mean() > 0.7  # the mass of "never stopped" lands at N
    assert torch.allclose(torch.bincount(renormalised, minlength=3) / 4000, q, atol=0.03)


def test_validation_draws_the_training_k_range_and_test_the_test_k_range():
    """With train_k ≠ test_k: validation vectors have k in train_k (the vectors sample_parity
    draws from the same seed with train_k), test vectors span test_k."""
    from stopwise.tasks.parity.data import evaluation_set

    cfg = config("train_k=[1,3]", "test_k=[1,8]", "val_size=300", "test_size=400")
    validation = evaluation_set(cfg, "validation", torch.Generator().manual_seed(7))
    assert int(validation.k.max()) <= 3 and len(validation.k) == 300
    same = sample_parity(300, 8, [1, 3], torch.Generator().manual_seed(7))
    assert torch.equal(validation.x, same.x) and torch.equal(validation.k, same.k)
    test = evaluation_set(cfg, "test", torch.Generator().manual_seed(7))
    assert int(test.k.max()) > 3 and len(test.k) == 400
    assert torch.equal(test.x, sample_parity(400, 8, [1, 8], torch.Generator().manual_seed(7)).x)


def test_a_jobs_validation_numbers_are_measured_on_its_validation_vectors(tmp_path, monkeypatch):
    """run_job's validation_accuracy / validation_steps are the accuracy and mean steps of the
    rule's outputs on the validation vectors (drawn by hand from the job's "validation" stream
    with train_k), and its test numbers those on the test vectors; a causal rule runs the steps
    it uses (steps_run = mean steps), a non-causal one every step (steps_run = max_steps)."""
    from stopwise.contract import stream_seed
    from stopwise.experiments import run_experiment
    from stopwise.tasks.parity import experiment

    overrides = ["train_k=[1,3]", "test_k=[1,8]", "updates=5", "methods=[pondernet]"]
    cfg = config(*overrides)
    calls = []

    def spy(rule, model, head, x, *args, **kwargs):
        logits, stop = infer(rule, model, head, x, *args, **kwargs)
        calls.append((rule, x.clone(), logits.clone(), stop.clone()))
        return logits, stop

    monkeypatch.setattr(experiment, "infer", spy)
    run = run_experiment("parity", "tiny", tmp_path / "run", [*overrides, "progress=false"])
    rows = run.job_file("pondernet-0.1-lr0.003-s0")["record"]["rows"]

    def draw(stream, size, k_range):
        return sample_parity(
            size, 8, k_range, torch.Generator().manual_seed(stream_seed(0, stream))
        )

    validation = draw("validation", cfg.val_size, [1, 3])
    test = draw("test", cfg.test_size, [1, 8])

    def measured(rule, batch):
        (call,) = [c for c in calls if c[0] == rule and torch.equal(c[1], batch.x)]
        right = [float((logit > 0) == (y == 1)) for logit, y in zip(call[2], batch.y, strict=True)]
        return sum(right) / len(right), sum(int(s) + 1 for s in call[3]) / len(call[3])

    assert [row["rule"] for row in rows] == ["sample", "median", "sample-q", "median-q"]
    for row in rows:
        accuracy, steps = measured(row["rule"], validation)
        assert row["validation_accuracy"] == pytest.approx(accuracy)
        assert row["validation_steps"] == pytest.approx(steps)
        accuracy, steps = measured(row["rule"], test)
        assert row["accuracy"] == pytest.approx(accuracy) and row["mean_steps"] == pytest.approx(
            steps
        )
        causal = row["rule"] in ("sample", "median")
        assert row["steps_run"] == (pytest.approx(steps) if causal else cfg.max_steps)
        assert steps < cfg.max_steps
    assert {row["validation_accuracy"] for row in rows} != {row["accuracy"] for row in rows}
