"""Training loop: exact resume after SIGKILL, safe checkpoints, batch sources, stage functions."""

import contextlib
import math
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import stopwise.checkpoints as checkpoints
import stopwise.training as training
from stopwise.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from stopwise.stoptime import StopTime
from stopwise.training import (
    EpochBatches,
    GeneratedBatches,
    Interrupted,
    LoopSettings,
    MetricsLog,
    request_stop,
    train_loop,
)

JOB = Path(__file__).with_name("resume_job.py")


def run_job(out: Path, kill_at: int | None = None) -> int:
    args = [sys.executable, str(JOB), str(out)] + ([str(kill_at)] if kill_at else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, env=env, capture_output=True, timeout=120).returncode


def final_weights(out: Path):
    return torch.load(out / "final.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    assert run_job(out) == 0
    return out


@pytest.mark.parametrize("kill_at", [17, 45])  # mid stage I; mid stage II (stage I done)
def test_killed_run_resumes_to_identical_weights(tmp_path, uninterrupted, kill_at):
    assert run_job(tmp_path, kill_at) == -9  # SIGKILL: no cleanup ran
    assert not (tmp_path / "final.pt").exists()
    assert run_job(tmp_path) == 0
    expected, resumed = final_weights(uninterrupted), final_weights(tmp_path)
    for part in ("model", "policy"):
        for name, value in expected[part].items():
            assert torch.equal(resumed[part][name], value), (part, name)
    records = MetricsLog(tmp_path / "metrics.jsonl").read()
    keys = [(r["stage"], r["step"]) for r in records]
    assert sorted(keys) == sorted(set(keys)), "a resumed step was logged twice"
    assert sorted(keys) == sorted(
        [("stage1", s) for s in range(30)] + [("stage2", s) for s in range(30)]
    )
    full_records = MetricsLog(uninterrupted / "metrics.jsonl").read()
    assert [r["loss"] for r in records] == [r["loss"] for r in full_records]


def counting_stage(tmp_path, every: int):
    """A model, loop settings checkpointing every ``every`` steps, a step function that adds 1
    to the weights, and the steps it was called for."""
    model = torch.nn.Linear(2, 1)
    settings = LoopSettings(checkpoint_dir=tmp_path, checkpoint_every=every, progress=False)
    calls = []

    def step_fn(step):
        calls.append(step)
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"w": model.weight.sum()}

    return model, settings, step_fn, calls


def test_finished_stage_is_skipped_and_restored(tmp_path):
    model, settings, step_fn, calls = counting_stage(tmp_path, every=3)
    last = train_loop("s", 5, step_fn, {"model": model}, settings)
    final = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    again = train_loop("s", 5, step_fn, {"model": model}, settings)
    assert calls == [0, 1, 2, 3, 4]
    assert torch.equal(model.weight, final)
    assert again == last == {"w": float(final.sum())}  # the last step's metrics, restored


def test_a_second_loop_of_the_same_stage_in_one_job_is_refused(tmp_path):
    """Two models trained one after the other under one stage name in a job: the second found
    the first's finished checkpoint, loaded its weights and trained nothing. The job's loop
    settings (however many times asked for) share the stages run; other names are fine, and a
    new job context (a rerun, which resumes) starts afresh."""
    from stopwise.contract import Job, JobContext, PlannedJob, RunDir
    from stopwise.tasks.toy.config import ToyConfig

    def job_context():
        planned = PlannedJob("fit-s0", Job("fit"), 0, {}, ())
        return JobContext(RunDir(tmp_path), ToyConfig(), planned, progress=False)

    model, _, step_fn, calls = counting_stage(tmp_path, every=3)
    context = job_context()
    train_loop("stage1", 2, step_fn, {"model": model}, context.loop_settings())
    with pytest.raises(ValueError, match="stage 'stage1' has already run in this job"):
        train_loop("stage1", 2, step_fn, {"model": model}, context.loop_settings())
    train_loop("stage2", 2, step_fn, {"model": model}, context.loop_settings())
    train_loop("stage1", 2, step_fn, {"model": model}, job_context().loop_settings())
    assert calls == [0, 1, 0, 1]  # the rerun's stage1 was finished: restored, not trained


def test_a_checkpoint_past_the_steps_asked_for_is_refused_and_a_longer_run_goes_on(tmp_path):
    """A stage rerun with fewer steps returned the finished longer run's weights as its own (an
    audit); with more steps it goes on from the finished checkpoint, as before."""
    model, settings, step_fn, calls = counting_stage(tmp_path, every=2)
    train_loop("s", 5, step_fn, {"model": model}, settings)
    with pytest.raises(CheckpointError, match="at step 5 of a run of 5 steps; this one asks for 3"):
        train_loop("s", 3, step_fn, {"model": model}, settings)
    train_loop("s", 8, step_fn, {"model": model}, settings)
    assert calls == [0, 1, 2, 3, 4, 5, 6, 7]


def test_a_signal_during_the_last_save_of_a_stage_waits_for_it(tmp_path, monkeypatch):
    """A SIGTERM that lands while the stage's final checkpoint is being written lets the write
    finish (a worker stopped there used to lose the stage it had just trained) and then stops."""
    monkeypatch.setattr(training, "_stop_signal", None)
    model = torch.nn.Linear(2, 1)
    saves = []

    def save_during_a_signal(path, payload):
        if payload["step"] == payload["num_steps"]:
            request_stop(signal.SIGTERM)  # as the handler would, mid-save
        save_checkpoint(path, payload)
        saves.append(payload["step"])

    monkeypatch.setattr(training, "save_checkpoint", save_during_a_signal)
    settings = LoopSettings(checkpoint_dir=tmp_path, checkpoint_every=100, progress=False)
    with pytest.raises(Interrupted):
        train_loop("s", 4, lambda step: {"loss": 1.0}, {"model": model}, settings)
    assert saves == [4] and load_checkpoint(tmp_path / "s.pt")["step"] == 4


def test_a_stop_signal_is_not_swallowed_by_a_callers_except_exception(tmp_path, monkeypatch):
    """A user's (or a library's) ``except Exception`` around a training loop caught the stop,
    and the script went on as if the stage had failed; like KeyboardInterrupt, it passes."""
    monkeypatch.setattr(training, "_stop_signal", None)
    model = torch.nn.Linear(2, 1)
    settings = LoopSettings(checkpoint_dir=tmp_path, checkpoint_every=100, progress=False)

    def step(i):
        if i == 2:
            request_stop(signal.SIGINT)  # as the handler does
        return {"loss": 1.0}

    carried_on = False
    with pytest.raises(Interrupted):
        try:
            train_loop("s", 5, step, {"model": model}, settings)
        except Exception:
            carried_on = True
    assert not carried_on and load_checkpoint(tmp_path / "s.pt")["step"] == 3


def test_interrupted_survives_pickling():  # a worker process sends it to the runner
    again = pickle.loads(pickle.dumps(Interrupted(signal.SIGTERM)))
    assert isinstance(again, Interrupted) and again.signum == signal.SIGTERM
    assert str(again) == "interrupted by SIGTERM"


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


class Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PAYLOAD_TARGET"]),))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    monkeypatch.setenv("PAYLOAD_TARGET", str(target))
    path = tmp_path / "evil.pt"
    torch.save({"state": Payload()}, path)
    with _no_warnings():
        with pytest.raises(
            CheckpointError, match="could run code.*was not loaded.*delete it"
        ) as error:
            load_checkpoint(path)
    assert "weights_only" not in str(error.value)  # torch's hint to unsafe-load is not repeated
    assert not target.exists()
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not target.exists()


def test_atomic_writes_follow_the_umask_and_clear_a_dead_writers_temporary(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = checkpoints.HOST
    stale = tmp_path / f".a.pt.{host}-{dead.pid}.0123456789ab.tmp"  # a writer killed mid-write
    live = tmp_path / f".a.pt.{host}-{os.getpid()}.0123456789ab.tmp"  # a write in progress
    other = tmp_path / f".a.pt.x.{host}-{dead.pid}.0123456789ab.tmp"  # another file's temporary
    elsewhere = tmp_path / f".a.pt.ffffffff-{dead.pid}.0123456789ab.tmp"  # another machine's
    for path in (stale, live, other, elsewhere):
        path.write_bytes(b"partial")
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "a.pt", {"x": torch.ones(2)})
    finally:
        os.umask(old)
    assert (tmp_path / "a.pt").stat().st_mode & 0o777 == 0o644  # mkstemp made it 0600
    assert not stale.exists() and live.exists() and other.exists() and elsewhere.exists()
    assert load_checkpoint(tmp_path / "a.pt")["x"].tolist() == [1.0, 1.0]


def test_corrupted_and_missing_checkpoints_are_clear_errors(tmp_path):
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {"w": torch.ones(1000), "step": 3, "name": "x", "pair": (1, 2.0)})
    assert load_checkpoint(path)["step"] == 3
    broken = tmp_path / "broken.pt"
    broken.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_checkpoint(broken)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    save_checkpoint(tmp_path / "list.pt", [1, 2])
    with pytest.raises(CheckpointError, match="not a checkpoint dict"):
        load_checkpoint(tmp_path / "list.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken.pt",
        "list.pt",
        "ok.pt",
    ]  # no temp files


def test_epoch_batches_are_permutations_and_pure():
    x = torch.arange(10)
    batches = EpochBatches((x, x * 2), batch_size=3, seed=5)
    epoch0 = torch.cat([batches(s)[0] for s in range(3)])
    epoch1 = torch.cat([batches(s)[0] for s in range(3, 6)])
    assert len(set(epoch0.tolist())) == 9 and len(set(epoch1.tolist())) == 9
    assert not torch.equal(epoch0, epoch1)
    again = EpochBatches((x, x * 2), batch_size=3, seed=5)
    assert torch.equal(again(4)[0], batches(4)[0])  # no hidden state: any step, any order
    assert torch.equal(batches(4)[1], batches(4)[0] * 2)
    with pytest.raises(ValueError, match="rows"):
        EpochBatches((x, x[:5]), 2)


def test_generated_batches_state_round_trip():
    batches = GeneratedBatches(lambda b, g: torch.rand(b, generator=g), 4, seed=0)
    batches(0)
    state = batches.state_dict()
    expected = batches(1)
    other = GeneratedBatches(lambda b, g: torch.rand(b, generator=g), 4, seed=99)
    other.load_state_dict(state)
    assert torch.equal(other(1), expected)


def test_metrics_log_skips_torn_lines_and_knows_logged_steps(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(3):
        log.write({"job": "a", "stage": "s", "step": step})
    log.write({"job": "b", "stage": "s", "step": 9})
    with open(tmp_path / "m.jsonl", "a") as f:
        f.write('{"job": "a", "stage": "s", "st')  # killed mid-write
    assert [r["step"] for r in log.read()] == [0, 1, 2, 9]
    assert log.logged_steps("s", {"job": "a"}) == {0, 1, 2}
    log.keep_only(lambda record: True)
    assert (tmp_path / "m.jsonl").read_text().endswith('"step": 9}\n')
    log.write({"job": "a", "stage": "s", "step": 3})
    assert [r["step"] for r in log.read()] == [0, 1, 2, 9, 3]


class PerStepScale(torch.nn.Module):
    """Step t predicts a_t · x: one parameter per step, so step weights are visible in the grads."""

    def __init__(self, steps):
        super().__init__()
        self.max_steps = steps
        self.a = torch.nn.Parameter(torch.zeros(steps))

    def start(self, x):
        return x

    def advance(self, state, t):
        return state

    def predict(self, state, t):
        return self.a[t] * state

    def features(self, state, t):
        return state


def per_step_mse(predictions, targets):
    return ((predictions - targets.unsqueeze(1)) ** 2).mean(-1)


def test_fit_predictor_trains_the_weighted_steps():
    from stopwise.training import fit_predictor

    x = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
    batches = EpochBatches((x, 2 * x), batch_size=64)
    last_only, everywhere = PerStepScale(4), PerStepScale(4)
    fit_predictor(
        last_only,
        batches,
        per_step_mse,
        torch.optim.SGD(last_only.parameters(), 0.3),
        60,
        step_weights=torch.tensor([0.0, 0.0, 0.0, 1.0]),
    )
    fit_predictor(
        everywhere, batches, per_step_mse, torch.optim.SGD(everywhere.parameters(), 1.0), 60
    )
    assert last_only.a[:3].tolist() == [0.0, 0.0, 0.0]
    assert last_only.a[3].item() == pytest.approx(2.0, abs=1e-3)
    assert everywhere.a.tolist() == pytest.approx([2.0] * 4, abs=1e-3)


@pytest.mark.parametrize("beta, entropy_range", [(100.0, (0.95, 1.0)), (0.001, (0.0, 0.5))])
def test_fit_joint_reaches_the_oracle_temperature(beta, entropy_range):
    """Large β: the joint optimum is near-uniform over steps; small β: it concentrates."""
    from stopwise.policies import create_policy
    from stopwise.steps import unroll
    from stopwise.stoptime import StopTime
    from stopwise.tasks.toy import RunningMean, sample_streams, squared_error
    from stopwise.training import fit_joint, policy_hazards

    torch.manual_seed(0)
    model, policy = RunningMean(5), create_policy("mlp", feature_dim=2, max_steps=5, hidden=(16,))
    batches = GeneratedBatches(lambda b, g: sample_streams(b, 5, [1.0], g), 128, seed=0)
    params = list(model.parameters()) + list(policy.parameters())
    fit_joint(model, policy, batches, squared_error, torch.optim.Adam(params, 3e-2), 150, beta=beta)
    z, _ = sample_streams(500, 5, [1.0], torch.Generator().manual_seed(1))
    with torch.no_grad():
        stop = StopTime(policy_hazards(policy, unroll(model, z, with_features=True).features))
    relative_entropy = stop.entropy().mean().item() / math.log(5)
    assert entropy_range[0] <= relative_entropy <= entropy_range[1]


class ScaledFeatures(PerStepScale):
    """PerStepScale whose policy features b_t · x also depend on the model: gradients of the
    joint objective reach ``b`` only through the features."""

    def __init__(self, steps):
        super().__init__(steps)
        self.b = torch.nn.Parameter(torch.ones(steps))

    def features(self, state, t):
        return self.b[t] * state


def test_fit_joint_loss_and_gradients_with_a_mask_by_a_plain_loop():
    """One step at learning rate 0 on a fixed batch with a mask: the logged loss is
    mean_i Σ_t q_t ℓ_t + β Σ_t q_t log q_t over the valid steps (q by a loop: λ_t ∏(1 − λ_τ) over
    valid τ < t, the last valid step taking the rest), and the gradients on the model's and the
    policy's parameters are autograd's of that loop — through the losses (a) and the features
    (b), neither detached."""
    from stopwise.policies import create_policy
    from stopwise.training import fit_joint

    T, beta, rows = 5, 0.7, 4
    model = ScaledFeatures(T)
    with torch.no_grad():
        model.a.copy_(torch.tensor([0.5, 1.9, 1.0, 1.5, 2.0]))
        model.b.copy_(torch.tensor([0.8, -1.2, 1.5, 0.6, -0.4]))
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([True, False, True, True, False])
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
    params = [model.a, model.b, *policy.parameters()]
    valid = [0, 2, 3]
    total = 0.0
    for i in range(rows):
        xi = x[i]
        q, survive, row = {}, 1.0, 0.0
        for t in valid:
            lam = torch.sigmoid(policy((model.b[t] * xi).unsqueeze(0), t)[0])
            q[t] = survive if t == valid[-1] else lam * survive
            survive = survive * (1 - lam)
        for t in valid:
            loss_t = sum((model.a[t] * xi[j] - 2 * xi[j]) ** 2 for j in range(3)) / 3
            row = row + q[t] * loss_t + beta * q[t] * torch.log(q[t])
        total = total + row / rows
    expected = torch.autograd.grad(total, params)
    metrics = fit_joint(
        model, policy, EpochBatches((x, 2 * x), batch_size=rows), per_step_mse,
        torch.optim.SGD(params, 0.0), 1, beta=beta, mask=mask,
    )  # fmt: skip
    assert float(metrics["loss"]) == pytest.approx(float(total.detach()), rel=1e-5)
    # the feature path carries a gradient (the last valid step's hazard does not matter)
    assert float(expected[1][valid[:-1]].abs().min()) > 1e-3
    for p, want in zip(params, expected, strict=True):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)


def test_fit_policy_step_penalty_imitates_the_cost_aware_oracle():
    """With a penalty λ·t, the hard oracle is argmin_t ℓ_t + λ t: a policy trained on it stops
    earlier than the cost-blind one, and exactly where the penalised argmin is, on a model whose
    per-step losses are known in closed form."""
    from stopwise.policies import create_policy
    from stopwise.training import fit_policy

    T = 5
    model = PerStepScale(T)
    with torch.no_grad():  # a_t = 2 − 2^{−t}: the loss falls with t, ever more slowly
        model.a.copy_(2 - 0.5 ** torch.arange(T, dtype=torch.float32))
    x = torch.ones(512, 3)
    batches = EpochBatches((x, 2 * x), batch_size=128)
    # ℓ_t = (2^{−t})² = 4^{−t}: 1, .25, .0625, ...; with λ = 0.2 per step, ℓ_t + λ t is
    # 1, .45, .4625, .6156, .8039: its argmin is step 1.
    losses = 0.25 ** torch.arange(T, dtype=torch.float64)
    penalised = losses + 0.2 * torch.arange(T)
    assert int(losses.argmin()) == T - 1 and int(penalised.argmin()) == 1
    chosen = {}
    for name, penalty in (("blind", None), ("aware", 0.2 * torch.arange(T, dtype=torch.float32))):
        torch.manual_seed(0)
        policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
        fit_policy(
            model, policy, batches, per_step_mse, torch.optim.Adam(policy.parameters(), 0.05),
            150, beta=1.0, hard=True, step_penalty=penalty,
        )  # fmt: skip
        with torch.no_grad():
            hazards = torch.stack([policy(x[:1], t) for t in range(T)], dim=1)
        chosen[name] = int(StopTime(hazards).probs.argmax())
    assert chosen == {"blind": T - 1, "aware": 1}


@pytest.mark.parametrize("hard", [False, True])
def test_fit_policy_with_a_mask_scores_the_masked_oracle_by_a_plain_loop(hard):
    """fit_policy's loss and mean steps on a batch (learning rate 0: the policy stays put)
    against loops over the valid steps: q(t) = λ_t ∏(1 − λ_τ) over valid τ < t, the last valid
    step taking the rest; target softmax(−ℓ/β) renormalised over the valid steps (soft) or the
    valid argmin (hard). The unmasked argmin (the last step) is masked."""
    from stopwise.policies import create_policy
    from stopwise.training import fit_policy

    T, beta = 5, 0.3
    model = PerStepScale(T)
    with torch.no_grad():  # ℓ_t ∝ (a_t − 2)²: 2.25, 0.01, 1, 0.25, 0 (times mean x²)
        model.a.copy_(torch.tensor([0.5, 1.9, 1.0, 1.5, 2.0]))
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([True, False, True, True, False])
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
    with torch.no_grad():
        hazards = torch.stack([policy(x, t) for t in range(T)], dim=1).double().tolist()
    a = [0.5, 1.9, 1.0, 1.5, 2.0]
    valid = [0, 2, 3]
    expected_loss, expected_steps = 0.0, 0.0
    for i, row in enumerate(x.tolist()):
        losses = [sum((a[t] * v - 2 * v) ** 2 for v in row) / 3 for t in range(T)]
        q, survive = {}, 1.0
        for t in valid:
            lam = 1 / (1 + math.exp(-hazards[i][t]))
            q[t] = survive if t == valid[-1] else lam * survive
            survive *= 1 - lam
        expected_steps += sum(q[t] * (t + 1) for t in valid) / 6
        if hard:
            expected_loss += -math.log(q[min(valid, key=lambda t, ls=losses: ls[t])]) / 6
        else:
            z = sum(math.exp(-losses[t] / beta) for t in valid)
            for t in valid:
                p = math.exp(-losses[t] / beta) / z
                expected_loss += p * math.log(p / q[t]) / 6
    metrics = fit_policy(
        model, policy, EpochBatches((x, 2 * x), batch_size=6), per_step_mse,
        torch.optim.SGD(policy.parameters(), 0.0), 1, beta=beta, hard=hard, mask=mask,
    )  # fmt: skip
    assert float(metrics["loss"]) == pytest.approx(expected_loss, rel=1e-5)
    assert float(metrics["mean_steps"]) == pytest.approx(expected_steps, rel=1e-5)


@pytest.mark.parametrize("price, expected", [(0.2, 1), (0.03, 3), (0.01, 4)])
def test_fit_gain_policy_stops_where_going_on_buys_less_than_the_price(price, expected):
    """ℓ_t = 4^{−t} (known in closed form): the best decrease per step from t is
    g_t = 0.75·4^{−t} (the next step), so a head regressed on −log g_t + log price and stopped
    at its first score ≥ 0 stops at the first g_t ≤ price — the argmin of ℓ_t + price·t."""
    from stopwise.policies import create_policy
    from stopwise.training import fit_gain_policy

    T = 5
    model = PerStepScale(T)
    with torch.no_grad():
        model.a.copy_(2 - 0.5 ** torch.arange(T, dtype=torch.float32))
    x = torch.ones(512, 3)
    losses = 0.25 ** torch.arange(T, dtype=torch.float64)
    assert int((losses + price * torch.arange(T)).argmin()) == expected
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
    fit_gain_policy(
        model, policy, EpochBatches((x, 2 * x), batch_size=128), per_step_mse,
        torch.optim.Adam(policy.parameters(), 0.05), 300, price=price,
    )  # fmt: skip
    with torch.no_grad():
        scores = torch.stack([policy(x[:1], t) for t in range(T)], dim=1)[0]
    decisions = torch.arange(T - 1, dtype=torch.float64)  # the last step has no decision
    target = -torch.log(0.75 * 0.25**decisions) + math.log(price)
    torch.testing.assert_close(scores[: T - 1].double(), target, atol=0.05, rtol=0)
    decided = (scores[: T - 1] >= 0).nonzero()
    assert (int(decided[0]) if len(decided) else T - 1) == expected


def test_fit_gain_head_on_cached_trajectories_equals_fit_gain_policy():
    """The same rows in the same order give the same head, whether the frozen model is rerun
    every update (fit_gain_policy) or its trajectories are computed once (fit_gain_head)."""
    from stopwise.policies import create_policy
    from stopwise.steps import unroll
    from stopwise.training import fit_gain_head, fit_gain_policy

    T = 5
    model = PerStepScale(T)
    with torch.no_grad():
        model.a.copy_(torch.linspace(0.5, 2.0, T))
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    y = 2 * x
    trajectory = unroll(model, x, with_features=True)
    features, losses = trajectory.features, per_step_mse(trajectory.predictions, y)
    heads = []
    for cached in (False, True):
        torch.manual_seed(0)
        head = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
        optimizer = torch.optim.Adam(head.parameters(), 0.01)
        if cached:
            rows = EpochBatches((torch.arange(64),), batch_size=16, seed=3)
            first = lambda step, rows=rows: rows(step)[0]  # noqa: E731
            fit_gain_head(head, features, losses, first, optimizer, 12, price=0.1)
        else:
            batches = EpochBatches((x, y), batch_size=16, seed=3)
            fit_gain_policy(model, head, batches, per_step_mse, optimizer, 12, price=0.1)
        heads.append(head.state_dict())
    for name in heads[0]:
        torch.testing.assert_close(heads[0][name], heads[1][name])


@pytest.mark.parametrize("cached", [False, True], ids=["fit_gain_policy", "fit_gain_head"])
def test_gain_stages_with_costs_and_a_mask_score_a_plain_loop(cached):
    """One step at learning rate 0 with uneven costs and a mask: the logged loss is the mean
    Huber (δ = 1) of h_t − log price against −log max(g_t, floor) over the valid steps but the
    last valid one, g_t = max over valid t' > t of (ℓ_t − ℓ_t') / (c_t' − c_t), by loops.
    The masked step (0-based 2) is the best step, so ignoring the mask moves the targets."""
    from stopwise.policies import create_policy
    from stopwise.steps import unroll
    from stopwise.training import fit_gain_head, fit_gain_policy

    T, rows, price, floor = 5, 6, 0.3, 1e-6
    a = [0.5, 1.0, 1.9, 1.5, 2.0]  # ℓ_t ∝ (a_t − 2)²: 2.25, 1, 0.01, 0.25, 0
    costs = [1.0, 2.0, 4.0, 5.0, 7.0]
    model = PerStepScale(T)
    with torch.no_grad():
        model.a.copy_(torch.tensor(a))
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([True, True, False, True, True])
    torch.manual_seed(0)
    policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
    with torch.no_grad():
        hazards = torch.stack([policy(x, t) for t in range(T)], dim=1).double().tolist()
    valid = [0, 1, 3, 4]
    terms = []
    for i, row in enumerate(x.tolist()):
        losses = [sum((a[t] * v - 2 * v) ** 2 for v in row) / 3 for t in range(T)]
        for t in valid[:-1]:
            gain = max((losses[t] - losses[u]) / (costs[u] - costs[t]) for u in valid if u > t)
            target = -math.log(max(gain, floor))
            d = abs(hazards[i][t] - math.log(price) - target)
            terms.append(0.5 * d * d if d < 1 else d - 0.5)
    expected = sum(terms) / len(terms)
    optimizer = torch.optim.SGD(policy.parameters(), 0.0)
    kw = {"costs": torch.tensor(costs), "price": price, "floor": floor, "mask": mask}
    if cached:
        trajectory = unroll(model, x, with_features=True)
        features, losses = trajectory.features, per_step_mse(trajectory.predictions, 2 * x)
        every_row = lambda step: torch.arange(rows)  # noqa: E731
        metrics = fit_gain_head(policy, features, losses, every_row, optimizer, 1, **kw)
    else:
        batches = EpochBatches((x, 2 * x), batch_size=rows)
        metrics = fit_gain_policy(model, policy, batches, per_step_mse, optimizer, 1, **kw)
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("cached", [False, True], ids=["fit_gain_policy", "fit_gain_head"])
def test_gain_stages_take_a_mask_of_zeros_and_ones_or_lists_as_fit_policy_does(cached):
    """A 0/1 mask failed with 'masked_fill_ only supports boolean masks', a list mask or list
    costs with "'list' object has no attribute 'to'" (fit_policy and run_adaptive take both;
    so do fit_predictor's step_weights and fit_policy's step_penalty now)."""
    from stopwise.policies import create_policy
    from stopwise.steps import unroll
    from stopwise.training import fit_gain_head, fit_gain_policy

    T, rows = 5, 6
    model = PerStepScale(T)
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(0))

    def loss(mask, costs):
        torch.manual_seed(0)
        policy = create_policy("mlp", feature_dim=3, max_steps=T, hidden=(8,))
        optimizer = torch.optim.SGD(policy.parameters(), 0.0)
        kw = {"costs": costs, "price": 0.3, "mask": mask}
        if cached:
            trajectory = unroll(model, x, with_features=True)
            features, losses = trajectory.features, per_step_mse(trajectory.predictions, 2 * x)
            every_row = lambda step: torch.arange(rows)  # noqa: E731
            return fit_gain_head(policy, features, losses, every_row, optimizer, 1, **kw)["loss"]
        batches = EpochBatches((x, 2 * x), batch_size=rows)
        return fit_gain_policy(model, policy, batches, per_step_mse, optimizer, 1, **kw)["loss"]

    costs = [1.0, 2.0, 4.0, 5.0, 7.0]
    expected = loss(torch.tensor([True, True, False, True, True]), torch.tensor(costs))
    assert loss(torch.tensor([1, 1, 0, 1, 1]), torch.tensor(costs)) == expected
    assert loss([1, 1, 0, 1, 1], costs) == expected
    assert expected != loss(None, torch.tensor(costs))  # the mask matters here


def test_step_weights_and_step_penalty_may_be_lists():
    from stopwise.policies import create_policy
    from stopwise.training import fit_policy, fit_predictor

    model = PerStepScale(4)
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    batches = EpochBatches((x, 2 * x), batch_size=6)
    listed = fit_predictor(
        model, batches, per_step_mse, torch.optim.SGD(model.parameters(), 0.0), 1, [0, 0, 0, 1.0]
    )
    tensor = fit_predictor(
        model, batches, per_step_mse, torch.optim.SGD(model.parameters(), 0.0), 1,
        torch.tensor([0, 0, 0, 1.0]),
    )  # fmt: skip
    assert listed == tensor

    penalties = []
    for penalty in ([0.1, 0.2, 0.3, 0.4], torch.tensor([0.1, 0.2, 0.3, 0.4])):
        torch.manual_seed(0)
        policy = create_policy("mlp", feature_dim=3, max_steps=4, hidden=(8,))
        optimizer = torch.optim.SGD(policy.parameters(), 0.0)
        metrics = fit_policy(
            model, policy, batches, per_step_mse, optimizer, 1, beta=0.1, step_penalty=penalty
        )
        penalties.append(metrics["loss"])
    assert penalties[0] == penalties[1]


def test_a_non_finite_gradient_with_a_finite_loss_is_never_applied_or_saved(tmp_path):
    """|a − t| written as √((a − t)²) has a finite value and a NaN gradient where a = t: the
    step raises Diverged before the optimizer moves, so the weights and the checkpoint of the
    step before stay finite (they used to take the NaN and be saved with it)."""
    from stopwise.training import Diverged, optimize

    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    target = torch.tensor([0.0, 2.1])
    optimizer = torch.optim.SGD([a], lr=0.1)
    settings = LoopSettings(checkpoint_dir=tmp_path, checkpoint_every=1, progress=False)
    holder = torch.nn.Module()
    holder.a = a

    def loss(step):  # step 0: a[1] = 2.0 → 2.1 − 0.1·(−1) = 2.1 = target at step 1
        return ((a - target) ** 2).sqrt().sum(), {}

    with pytest.raises(Diverged, match="gradient norm nan"):
        optimize("s", 3, loss, optimizer, {"model": holder}, settings)
    assert torch.isfinite(a).all() and a.tolist() == pytest.approx([0.9, 2.1])
    saved = load_checkpoint(tmp_path / "s.pt")
    assert saved["step"] == 1 and torch.isfinite(saved["state"]["model"]["a"]).all()


def test_fit_gain_head_resumes_its_batch_source(tmp_path, monkeypatch):
    """A stateful row sampler (GeneratedBatches) is checkpointed with the head: stopped by a
    signal after 5 of 12 updates and resumed with fresh objects, the head equals one trained in
    a single go (the sampler used to restart from its seed)."""
    from stopwise.policies import create_policy
    from stopwise.training import fit_gain_head

    g = torch.Generator().manual_seed(0)
    features, losses = torch.randn(64, 5, 3, generator=g), torch.rand(64, 5, generator=g)

    class Rows(GeneratedBatches):  # draws 16 row indices; can ask to stop after some draws
        def __init__(self, stop_after=None):
            super().__init__(lambda n, gen: torch.randint(0, 64, (n,), generator=gen), 16, 3)
            self.stop_after, self.calls = stop_after, 0

        def __call__(self, step):
            self.calls += 1
            if self.calls == self.stop_after:
                request_stop(signal.SIGTERM)
            return super().__call__(step)

    def train(directory, stop_after=None):
        torch.manual_seed(0)
        head = create_policy("mlp", feature_dim=3, max_steps=5, hidden=(8,))
        optimizer = torch.optim.Adam(head.parameters(), 0.01)
        settings = LoopSettings(checkpoint_dir=directory, checkpoint_every=50, progress=False)
        fit_gain_head(
            head, features, losses, Rows(stop_after), optimizer, 12, price=0.1, settings=settings
        )
        return head.state_dict()

    monkeypatch.setattr(training, "_stop_signal", None)
    whole = train(tmp_path / "whole")
    with pytest.raises(Interrupted):
        train(tmp_path / "resumed", stop_after=5)
    monkeypatch.setattr(training, "_stop_signal", None)
    resumed = train(tmp_path / "resumed")
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name


def test_loop_settings_and_best_weights_refuse_what_cannot_work():
    from stopwise.training import ValidationSchedule

    for key in ("checkpoint_every", "log_every"):
        with pytest.raises(ValueError, match=key):
            LoopSettings(**{key: 0})
    module = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    schedule = ValidationSchedule(module, optimizer, lambda: {"score": math.nan}, 2, 1, 5)
    for _ in range(2):  # two evaluations, neither a number
        schedule.step()
    with pytest.raises(ValueError, match="no validation score"):
        schedule.restore_best()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_a_stage_drawing_from_the_gpu_generator_resumes_exactly(tmp_path, monkeypatch):
    """Each step adds a draw of the global CUDA generator: stopped after 3 of 6 steps and
    resumed, the sum equals one made in a single go (the CUDA generator is checkpointed)."""
    monkeypatch.setattr(training, "_stop_signal", None)

    def run(directory, stop_at=None):
        torch.cuda.manual_seed_all(0)
        module = torch.nn.Module()
        module.register_buffer("total", torch.zeros(4, device="cuda"))

        def step_fn(step):
            module.total += torch.rand(4, device="cuda")
            if step == stop_at:
                request_stop(signal.SIGTERM)
            return {"loss": 0.0}

        settings = LoopSettings(checkpoint_dir=directory, progress=False)
        train_loop("s", 6, step_fn, {"m": module}, settings)
        return module.total.cpu()

    whole = run(tmp_path / "whole")
    with pytest.raises(Interrupted):
        run(tmp_path / "resumed", stop_at=2)
    monkeypatch.setattr(training, "_stop_signal", None)
    assert torch.equal(run(tmp_path / "resumed"), whole)


@pytest.mark.parametrize("uniform", [0.0, 0.3])
def test_fit_oracle_with_a_mask_weights_the_valid_steps_by_a_plain_loop(uniform):
    """Stage I with a mask, one step at learning rate 0 on a fixed batch: the logged loss is
    mean_i Σ_{valid t} w_t ℓ_t with w = (1 − u)·q* + u/|valid|, q*(t) = exp(−ℓ_t/β) normalised
    over the valid steps only (a loop), and the gradient is that loss's with w held fixed: the
    masked step (a_1 = 2.1, the best of all, which an unmasked oracle would weight most) gets
    no gradient at all."""
    from stopwise.training import fit_oracle

    T, beta, rows = 4, 0.5, 3
    model = PerStepScale(T)
    with torch.no_grad():
        model.a.copy_(torch.tensor([0.5, 2.1, 1.0, 3.0]))
    x = torch.randn(rows, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([True, False, True, True])
    valid = [0, 2, 3]
    total = 0.0
    for i in range(rows):
        losses = {t: sum((model.a[t] * x[i, j] - 2 * x[i, j]) ** 2 for j in range(3)) / 3
                  for t in valid}  # fmt: skip
        z = sum(math.exp(-float(v.detach()) / beta) for v in losses.values())
        for t in valid:
            q = math.exp(-float(losses[t].detach()) / beta) / z
            w = (1 - uniform) * q + uniform / len(valid)
            total = total + w * losses[t] / rows
    (expected,) = torch.autograd.grad(total, [model.a])
    metrics = fit_oracle(
        model, EpochBatches((x, 2 * x), batch_size=rows), per_step_mse,
        torch.optim.SGD(model.parameters(), 0.0), 1, beta=beta, mask=mask, uniform=uniform,
    )  # fmt: skip
    assert float(metrics["loss"]) == pytest.approx(float(total.detach()), rel=1e-6)
    assert model.a.grad[1].item() == 0.0
    torch.testing.assert_close(model.a.grad, expected, rtol=1e-5, atol=1e-7)


def test_a_validation_score_that_only_ties_the_best_keeps_the_earlier_best():
    """Scores 1, 2, 2 with the weights changed before each evaluation: the tie at step 3 is no
    improvement, so the best is step 2's score and weights."""
    from stopwise.training import ValidationSchedule

    module = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    scores = iter([1.0, 2.0, 2.0])
    schedule = ValidationSchedule(module, optimizer, lambda: {"score": next(scores)}, 3, 1, 5)
    for weight in (1.0, 2.0, 3.0):
        with torch.no_grad():
            module.weight.fill_(weight)
        schedule.step()
    assert (schedule.best_step, schedule.best_score) == (2, 2.0)
    schedule.restore_best()
    assert module.weight.item() == 2.0
