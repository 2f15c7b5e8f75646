"""`stopwise run multi-exit` on the tiny preset (scikit-learn digits): what the run directory
holds; the task's own refusals (missing Fashion-MNIST files, inconsistent keys) before anything
is written; the jobs' shared streams; and L2W with δ = 0 is uniform training (same initial
weights, same batches, meta steps without side effects). Resume, kill and generic bad-key tests
are the contract tests' (tests/test_experiment_contract.py)."""

import copy
import gzip
import hashlib
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_multi_exit_data import idx_bytes

from stopwise.cli import main
from stopwise.config import ConfigError
from stopwise.contract import Job, JobContext, PlannedJob, RunDir
from stopwise.experiments import get_experiment, resolve_config, run_experiment
from stopwise.tasks.multi_exit.data import load_splits
from stopwise.tasks.multi_exit.methods import build_model, train_method

EXPERIMENT = get_experiment("multi-exit")
TINY_METHODS = resolve_config(EXPERIMENT, "tiny")[0].methods  # every method but l2w-all
# On the test worker of the contract tests' multi-exit group, so that this module reads their
# uninterrupted tiny run (conftest.py) rather than making its own, and makes small_run once.
pytestmark = pytest.mark.xdist_group("multi-exit")


@pytest.fixture(scope="module")
def tiny_run(uninterrupted):
    return uninterrupted["multi-exit"]


def test_tiny_run_writes_curves_tables_figures_and_real_early_exit(tiny_run):
    for figure in ["accuracy_vs_macs", "per_exit_accuracy", "weights_vs_loss"]:
        assert (tiny_run / "figures" / f"{figure}.png").stat().st_size > 0
    results = json.loads((tiny_run / "results.json").read_text())
    data = results["data"]
    assert (data["train"], data["validation"], data["test"]) == (1097, 300, 400)
    # Every network has a confidence and a gain-head curve (gain_head=true); L2S also a policy.
    assert len(results["lines"]) == 2 * len(TINY_METHODS) + 1
    jobs = set(TINY_METHODS) - {"l2s"} | {"l2s-b1"}
    trained = jobs - {"uniform"} | {"l2s-b1 (policy)"} | {f"{j} (gain head)" for j in jobs}
    assert set(results["paired_vs_uniform"]) == trained | {"l2s", "l2s (policy)"}
    for line in results["l2s_selected"]:  # β ∈ {1, ∞ (uniform)} chosen per budget on validation
        assert all(b in (1.0, None) for b in line["chosen_beta_per_seed"]["0"])
        jobs_chosen = line["chosen_job_per_seed"]["0"]
        assert len(jobs_chosen) == len(line["chosen_beta_per_seed"]["0"])
        assert set(jobs_chosen) <= {"l2s-b1", "uniform", None}
    for line in results["lines"]:
        assert len(line["curve_mean"]) == 39 and line["adaptive_matches_dense"], line["label"]
    timing = results["timing"]["l2w-s0"]["rules"]
    assert list(timing) == ["0.5", "0.6", "0.7"] and all(
        r["mac_ratio"] > 1 for r in timing.values()
    )
    log = results["weight_log"]["l2w-s0"]
    assert 0 <= log["negative_fraction"] <= 1 and len(log["negative_per_exit_fraction"]) == 3
    assert log["meta_steps"] == results["updates"]  # official: a meta step every update
    final = results["weights_final"]["l2w-s0"]
    assert final["min"] <= final["quantiles"][0] <= final["quantiles"][-1] <= final["max"]
    table = (tiny_run / "table.md").read_text()
    assert "L2W − uniform" in table and "speedup" in table and "95%" in table
    assert "± 0.00" not in table  # one seed (tiny) has no sd to show, nor says it has
    assert "seed 0 alone (no sd)" in table and "one seed: the difference alone" in table
    # each timed row says what share of the MACs the curve point it timed spends
    for r in timing.values():
        assert f"| {100 / r['mac_ratio']:.0f}% |" in table
    stages = {
        (r["job"], r["stage"])
        for r in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines())
    }
    trained = {("l2w-train-s0", "train"), ("l2s-b1-train-s0", "stage1")}
    assert trained | {("l2s-b1-train-s0", "stage2")} <= stages  # the training jobs' stages
    assert {(f"{job}-s0", "gain-head") for job in jobs} <= stages  # fitted by the evaluations


def test_the_l2s_policy_curve_pays_the_policy_at_every_exit_it_asks(tiny_run):
    """L2S's policy (the same features and width as the gain head: 6·32 + 32 MACs a call) is
    costed like the gain head: the exits reached plus one call at each from the floor on, but
    not at the last exit (every row stops there; no one is asked)."""
    record = json.loads((tiny_run / "jobs" / "l2s-b1-s0.json").read_text())["record"]
    exits = torch.tensor(record["step_costs"], dtype=torch.float64)
    for point in record["curves"]["policy"]:
        asked = (torch.tensor([1, 2, 2]) - (point["floor_steps"] - 1)).clamp(min=0)
        paid = torch.tensor(point["exit_fractions"], dtype=torch.float64) @ (exits + 224 * asked)
        assert point["mean_cost"] == pytest.approx(float(paid))


def test_the_gain_head_gets_a_budget_curve_run_for_real_and_a_verdict(tiny_run):
    """gain_head=true (the tiny preset): every network's gain head has a curve whose (floored)
    thresholds are fitted on validation within each budget, costed with the head's own MACs on
    top of the exits', run for real at each budget, and judged against the same network's
    fixed exits."""
    record = json.loads((tiny_run / "jobs" / "uniform-s0.json").read_text())["record"]
    curve, exits = record["curves"]["gain"], record["step_costs"]
    budgets = [p["budget"] for p in curve]
    assert budgets == sorted(budgets) and budgets == [
        max(p["val_mean_cost"], exits[0]) for p in record["curves"]["confidence"]
    ]
    assert all(p["val_mean_cost"] <= p["budget"] + 1e-9 for p in curve)
    # Each row pays the exits it reached and the head's 6·32 + 32 MACs at each of them from
    # the floor on (before it the head is not asked), but the last (where every row stops).
    for point in curve:
        asked = (torch.tensor([1, 2, 2]) - (point["floor_steps"] - 1)).clamp(min=0)
        costs = torch.tensor(exits, dtype=torch.float64) + 224 * asked
        paid = torch.tensor(point["exit_fractions"], dtype=torch.float64) @ costs
        assert point["mean_cost"] == pytest.approx(float(paid))
    assert [r["budget"] for r in record["adaptive"]["gain"]] == budgets
    assert all(r["matches_dense"] for r in record["adaptive"]["gain"])
    results = json.loads((tiny_run / "results.json").read_text())
    verdict = results["dominance"]["Uniform Σ_k CE_k (gain head)"]
    assert verdict["points"] == len(curve) and isinstance(verdict["met"], bool)
    paired = results["gain_minus_confidence_worst_gain"]["uniform"]
    line = {li["key"]: li for li in results["lines"]}
    expected = line["uniform (gain head)"]["worst_gain_per_seed"]["0"]
    assert paired["mean"] == pytest.approx(expected - line["uniform"]["worst_gain_per_seed"]["0"])
    table = (tiny_run / "table.md").read_text()
    assert "- Uniform Σ_k CE_k (gain head): no worse than fixed depth at every budget" in table
    assert "gain head − confidence thresholds of the same network" in table


def test_every_curve_point_s_own_rule_run_for_real_gives_the_point_s_numbers(tiny_run):
    """The numbers of a budget curve (what the table interpolates) are those of rules that run:
    each point's rule (floored thresholds, mixes of two) run with run_adaptive in shrink mode
    on the test split gives the point's accuracy and mean MACs (the curve's come from the
    vectorised stop indices of dense hazards), for the confidence thresholds, the L2S policy
    and the gain heads of every network."""
    checked, mixes = 0, 0
    for path in (tiny_run / "jobs").glob("*.json"):
        record = json.loads(path.read_text())["record"]
        for name, curve in record.get("curves", {}).items():
            real = record["adaptive"][name]
            assert len(real) == len(curve) == 39, (path.name, name)
            for point, ran in zip(curve, real, strict=True):
                assert ran["accuracy"] == pytest.approx(point["accuracy"], abs=1e-12)
                assert ran["mean_cost"] == pytest.approx(point["mean_cost"], rel=1e-12)
                assert ran["matches_dense"] and ran["matches_curve"]
                checked, mixes = checked + 1, mixes + ("mix" in point)
    assert checked == 39 * (2 * len(TINY_METHODS) + 1) and mixes > 0  # + the L2S policy
    table = (tiny_run / "table.md").read_text()
    assert "accuracy and mean MACs equal the curve's: yes" in table


def test_every_method_of_a_seed_starts_from_the_same_weights_and_batches(tiny_run):
    """The first update's forward pass (before any change to the weights) on the first batch:
    the last exit's cross-entropy is the same for every method (L2S logs it scaled by K = 3), and
    L2W's unweighted loss Σ_k mean_i ℓ_ik is uniform's loss."""
    first = {}
    for record in map(json.loads, (tiny_run / "metrics.jsonl").read_text().splitlines()):
        if record["step"] == 0 and record["stage"] in ("train", "stage1"):
            first[record["job"]] = record
    last = first["uniform-train-s0"]["last"]
    assert first["sdn-train-s0"]["last"] == pytest.approx(last, rel=1e-6)
    assert first["l2s-b1-train-s0"]["last"] == pytest.approx(3 * last, rel=1e-6)
    for job in ("l2w", "l2w-fo", "l2w-last"):
        unweighted = first[f"{job}-train-s0"]["unweighted"]
        assert unweighted == pytest.approx(first["uniform-train-s0"]["loss"], rel=1e-6)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sdn_weights=1.0", "sdn_weights needs one weight per exit"),
        ("strides=1,2", "need one entry per exit"),
        ("methods=uniform", "timing.methods ['l2w'] are not among methods"),
        ("val_size=1500", "digits has 1797 rows: val_size 1500 + test_size 400 must leave"),
        ("budgets=0.5,0.2", "must be increasing"),
    ],
)
def test_inconsistent_settings_are_refused_naming_them(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve_config(EXPERIMENT, "tiny", [override])


def test_missing_fashion_files_exit_2_naming_them_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    out, folder = tmp_path / "r", tmp_path / "none"
    assert main(["run", "multi-exit", "--preset", "fashion", "--out", str(out),
                 "--set", f"data_dir={folder}"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    assert str(folder / "train-images-idx3-ubyte.gz") in error and "data_dir" in error
    assert "apt install dataset-fashion-mnist" in error and "Traceback" not in error
    assert not out.exists()


def test_show_prints_a_preset_whose_data_is_missing_and_says_what_running_it_needs(
    tmp_path, capsys, monkeypatch
):
    """``show`` is how a user finds the keys to point at their data: it failed (exit 2) for
    the Fashion-MNIST presets on a machine without the files."""
    monkeypatch.setenv("STOPWISE_DATA", str(tmp_path / "none"))
    assert main(["show", "multi-exit", "--preset", "fashion"]) == 0
    out = capsys.readouterr().out
    assert "resolved config of preset 'fashion'" in out and '"dataset": "fashion-mnist"' in out
    assert (
        f"(to run it: multi-exit: Fashion-MNIST file train-images-idx3-ubyte not found in {tmp_path / 'none'}"
        in out
    )


def write_idx_folder(folder, n_train, n_test, seed, side=8, gz=True):
    """A user's own IDX data set (MNIST layout, ``side``×``side`` images), written by hand."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 50, (n, side, side)) + 20 * labels[:, None, None]
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = folder / f"{prefix}-{kind}-ubyte"
            if gz and kind.startswith("images"):
                (folder / f"{name.name}.gz").write_bytes(gzip.compress(data))
            else:
                name.write_bytes(data)
    return folder


# A run on a user's 8×8 IDX files in seconds (one method, one epoch, no gain head, no timing).
IDX_RUN = [
    "dataset=fashion-mnist", "val_size=20", "train_size=0", "stem=1", "channels=4,8",
    "strides=1,2", "sdn_weights=0.5,1", "head_width=4", "epochs=1", "batch_size=16",
    "methods=uniform", "timing.methods=[]", "gain_head=false", "progress=false",
]  # fmt: skip


def test_a_rerun_with_another_data_folder_is_refused_never_served_the_old_jobs(
    tmp_path, capsys, monkeypatch
):
    """A digest of the IDX files is part of every training job's settings: a rerun into the same
    --out with other IDX files (through data_dir or STOPWISE_DATA) is refused, and the finished
    job and results stay those of the first folder; the same files elsewhere are reused."""
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    first = write_idx_folder(tmp_path / "a", 60, 20, seed=0)
    other = write_idx_folder(tmp_path / "b", 70, 24, seed=7)
    out = tmp_path / "run"
    run_experiment("multi-exit", "tiny", out, [*IDX_RUN, f"data_dir={first}"])
    before = (out / "results.json").read_text()
    record = (out / "jobs" / "uniform-s0.json").read_text()
    args = ["run", "multi-exit", "--preset", "tiny", "--out", str(out)]
    args += [x for item in IDX_RUN for x in ("--set", item)]
    assert main([*args, "--set", f"data_dir={other}"]) == 2
    error = capsys.readouterr().err
    assert "params.data" in error and "sha256:" in error
    job = json.loads((out / "jobs" / "uniform-train-s0.json").read_text())
    digest = hashlib.sha256()
    for name in sorted(["test_images", "test_labels", "train_images", "train_labels"]):
        part, kind = name.split("_")
        prefix = {"train": "train", "test": "t10k"}[part]
        dims = {"images": 3, "labels": 1}[kind]
        files = list(first.glob(f"{prefix}-{kind}-idx{dims}-ubyte*"))
        digest.update(f"{name}:{hashlib.sha256(files[0].read_bytes()).hexdigest()}\n".encode())
    assert job["settings"]["params"]["data"] == f"sha256:{digest.hexdigest()[:16]}"
    monkeypatch.setenv("STOPWISE_DATA", str(other))  # the folder from the environment: the same
    assert main(args) == 2
    assert "params.data" in capsys.readouterr().err
    assert (out / "results.json").read_text() == before
    assert json.loads((out / "results.json").read_text())["data"]["test"] == 20
    # The same files by another path (relative, through a link) or copied elsewhere are the
    # same setting.
    (tmp_path / "link").symlink_to(first)
    shutil.copytree(first, tmp_path / "copy")
    monkeypatch.delenv("STOPWISE_DATA")
    monkeypatch.chdir(tmp_path)
    for same in ("link", "copy"):
        assert main([*args, "--set", f"data_dir={same}"]) == 0  # nothing to run: reused
        assert (out / "jobs" / "uniform-s0.json").read_text() == record


def test_timing_a_finished_job_or_no_longer_timing_it_is_a_changed_setting(tmp_path, capsys):
    """Whether a job's early exit is timed was told only by the timing keys in its settings, at
    their defaults, which the runner takes as keys added to the task later: a rerun with the
    method added to timing.methods served the untimed record, no timing and no message (found
    by an audit). Now refused both ways, naming params.timed."""
    out = tmp_path / "run"
    args = ["run", "multi-exit", "--preset", "tiny", "--out", str(out), "--set", "methods=uniform"]
    args += ["--set", "progress=false", "--set", "timing.batch=1000", "--set", "timing.repeats=5"]
    assert main([*args, "--set", "timing.methods=[]"]) == 0
    assert main([*args, "--set", "timing.methods=uniform"]) == 2
    assert "params.timed: (absent) -> True" in capsys.readouterr().err
    timed = tmp_path / "timed"
    args[args.index(str(out))] = str(timed)
    assert main([*args, "--set", "timing.methods=uniform"]) == 0
    assert "timing" in json.loads((timed / "jobs" / "uniform-s0.json").read_text())["record"]
    assert main([*args, "--set", "timing.methods=[]"]) == 2
    assert "params.timed: True -> (absent)" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """uniform and L2S (β = 1), uniform's early exit timed."""
    out = tmp_path_factory.mktemp("small") / "run"
    return run_experiment("multi-exit", "tiny", out, SMALL).path


SMALL = ["progress=false", "methods=uniform,l2s", "timing.methods=uniform"]


def _numbers(run):
    """A run's results.json but the timings (wall and CPU seconds, speedups, the inference
    copy's layout chosen by timing it) and fingerprint."""

    def numbers(value):
        if isinstance(value, dict):
            timings = ("seconds", "speedup", "layout", "fingerprint")
            return {k: numbers(v) for k, v in value.items() if not any(t in k for t in timings)}
        return [numbers(v) for v in value] if isinstance(value, list) else value

    return numbers(json.loads((run / "results.json").read_text()))


@pytest.mark.parametrize("change", ["budgets=0.45,0.55", "inference_mode=masked"])
def test_other_budgets_or_inference_mode_evaluate_the_trained_networks_again(
    small_run, tmp_path, change
):
    """Budgets are calibrated on validation and the inference mode is how the rules run: with
    another value, reuse_from takes every training job and only the evaluations (and L2S's
    choice of β) run, to the numbers of a fresh run. Each job trained and evaluated its network
    at once before, so another budget or mode trained every network again."""
    out = tmp_path / "changed"
    run_experiment("multi-exit", "tiny", out, [*SMALL, change, f"reuse_from={small_run}"])
    jobs = {p.stem: json.loads(p.read_text()) for p in (out / "jobs").glob("*.json")}
    assert sorted(jobs) == sorted(
        ["l2s-b1-s0", "l2s-s0", "l2s-b1-train-s0", "uniform-train-s0", "uniform-s0"]
    )
    assert sorted(id for id, job in jobs.items() if job.get("reused_from")) == [
        "l2s-b1-train-s0",
        "uniform-train-s0",
    ]
    fresh = run_experiment("multi-exit", "tiny", tmp_path / "fresh", [*SMALL, change]).path
    assert _numbers(out) == _numbers(fresh)


@pytest.mark.parametrize(
    "data, overrides, message",
    [
        # A user's IDX files (60 training rows of 8×8, 20 test rows): counts from the headers.
        ("idx", ["val_size=60"], "has 60 rows: val_size 60"),
        ("idx", ["val_size=20", "train_size=41"], "train_size must lie in 0..40"),
        # the rows left name the keys the user set (it said "train_size 10", never set)
        ("idx", ["val_size=50", "batch_size=16"], "val_size 50 leave 10 training rows of the IDX"),
        ("idx", ["val_size=20", "train_size=10"], "train_size 10: fewer than batch_size 16"),
        ("digits", ["val_size=1350"], "val_size 1350 and test_size 400 leave 47 training rows"),
        # a user's IDX folder with another data set was ignored: digits trained, exit 0
        ("idx-digits", [], "data_dir (IDX files) needs dataset=fashion-mnist, not digits"),
        ("idx", ["stem=3"], "stem 3 must divide the input size 8×8"),
        ("idx-mismatch", [], "expected as many labels as images"),
        ("idx-empty-images", [], "images of size 0×0; need at least 1×1"),
        ("digits", ["stem=3"], "stem 3 must divide the input size 8×8 of digits"),
        ("mnist1d", ["stem=3"], "stem 3 must divide the input size 40 of mnist1d"),
        ("mnist1d", ["mnist1d_per_level=1005"], "mnist1d_per_level=1005 must be a multiple of 10"),
        ("mnist1d", ["mnist1d_per_level=5"], "mnist1d_per_level=5 must be >= 10"),
    ],
)
def test_data_dependent_limits_exit_2_naming_the_key_before_anything_is_written(
    tmp_path, capsys, monkeypatch, data, overrides, message
):
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    args = ["run", "multi-exit", "--preset", "tiny", "--out", str(tmp_path / "r")]
    if data.startswith("idx"):
        folder = write_idx_folder(
            tmp_path / "idx", 60, 20, seed=0, side=0 if "empty" in data else 8
        )
        if data == "idx-mismatch":  # 21 test labels for 20 test images
            labels = np.zeros(21, dtype=np.uint8)
            (folder / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
        overrides = [*IDX_RUN, f"data_dir={folder}", *overrides]
        if data == "idx-digits":
            overrides.append("dataset=digits")
    elif data == "mnist1d":
        overrides = ["dataset=mnist1d", "val_size=100", "test_size=100", *overrides]
    for key, value in dict(item.split("=", 1) for item in overrides).items():  # the last wins
        args += ["--set", f"{key}={value}"]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error, error
    assert not (tmp_path / "r").exists()


def _context(tmp_path, config, method):
    job = Job(method, params={"method": method})
    planned = PlannedJob(f"{method}-s0", job, 0, {}, ())
    return JobContext(RunDir(tmp_path / method), config, planned, progress=False)


@pytest.mark.parametrize("meta_batch", ["full", "half"])
def test_l2w_with_zero_delta_is_uniform_training(tmp_path, meta_batch):
    config, _ = resolve_config(
        EXPERIMENT, "tiny", ["l2w.delta=0.0", "epochs=2", f"l2w.meta_batch={meta_batch}"]
    )
    splits = load_splits(config)
    trained = {}
    for method in ("uniform", "l2w", "l2w-fo", "l2w-last", "l2w-all"):
        context = _context(tmp_path / meta_batch, config, method)
        context.manual_seed("init")
        model = build_model(config, splits)
        train_method(method, model, splits, config, context)
        trained[method] = model.state_dict()
    for method in ("l2w", "l2w-fo", "l2w-last", "l2w-all"):
        for key, value in trained["uniform"].items():
            close = torch.allclose(trained[method][key].double(), value.double(), atol=1e-5)
            assert close, (method, key)


def test_sdn_trains_on_weights_summing_to_k_by_its_logged_step_0_loss(tmp_path):
    """The first logged SDN loss is Σ_k c_k·mean_i ℓ_ik on the first training batch of the
    untrained network, with c = w·K/Σw by hand (tiny: w = 0.33, 0.67, 1.0, K = 3)."""
    from stopwise.contract import stream_seed
    from stopwise.training import EpochBatches, MetricsLog

    config, _ = resolve_config(EXPERIMENT, "tiny", ["epochs=1"])
    splits = load_splits(config)
    context = _context(tmp_path, config, "sdn")
    context.manual_seed("init")
    model = build_model(config, splits)
    start = copy.deepcopy(model).train()
    train_method("sdn", model, splits, config, context)
    c = [w * 3 / (0.33 + 0.67 + 1.0) for w in (0.33, 0.67, 1.0)]
    batches = EpochBatches((splits.train_x, splits.train_y), config.batch_size,
                           stream_seed(0, "train-batches"))  # fmt: skip
    x, y = batches(0)
    with torch.no_grad():
        logits = start(x)  # (B, K, C)
    expected = sum(
        c[k] * float(torch.nn.functional.cross_entropy(logits[:, k], y)) for k in range(3)
    )
    (first,) = [r for r in MetricsLog(context.run.metrics_path).read() if r["step"] == 0]
    assert first["loss"] == pytest.approx(expected, rel=1e-5)


class _Stop(Exception):
    pass


def test_l2s_stage_one_trains_at_temperature_k_beta(tmp_path, monkeypatch):
    """Stage I's loss is K·ℓ, so its oracle softmax(−K·ℓ/T) equals softmax(−ℓ/β) at T = K·β."""
    from stopwise.tasks.multi_exit import methods

    config, _ = resolve_config(EXPERIMENT, "tiny")
    splits = load_splits(config)
    seen = {}

    def spy(model, batches, loss_fn, **kwargs):
        seen.update(kwargs, loss_fn=loss_fn)
        raise _Stop

    monkeypatch.setattr(methods, "fit_oracle", spy)
    context = _context(tmp_path, config, "l2s")
    model = build_model(config, splits)
    with pytest.raises(_Stop):
        train_method("l2s", model, splits, config, context, beta=0.7)
    K = model.max_steps
    assert K == 3 and seen["beta"] == pytest.approx(3 * 0.7)
    logits, y = torch.randn(5, 3, 4), torch.randint(0, 4, (5,))
    ce = torch.stack([F.cross_entropy(logits[:, k], y, reduction="none") for k in range(3)], 1)
    torch.testing.assert_close(seen["loss_fn"](logits, y), 3 * ce)


@pytest.mark.parametrize(
    "method, mode, form",
    [("l2w", "full", "pooled"), ("l2w-fo", "first_order", "pooled"),
     ("l2w-last", "full", "last"), ("l2w-all", "full", "all")],
)  # fmt: skip
@pytest.mark.parametrize("meta_batch", ["full", "half"])
def test_each_l2w_variant_asks_its_own_meta_gradient(tmp_path, monkeypatch, method, mode, form,
                                                     meta_batch):  # fmt: skip
    """The first meta step of each variant: its gradient mode and meta loss (l2w and l2w-fo
    follow the config's l2w.meta_loss, set to "pooled" here); with meta_batch=half, the virtual
    step reads the first half of the first training batch and the meta loss the other half,
    with meta_batch=full the whole batch and a batch of the "l2w-meta-batches" stream."""
    from stopwise.contract import stream_seed
    from stopwise.tasks.multi_exit import l2w
    from stopwise.training import EpochBatches

    overrides = ["l2w.meta_loss=pooled", f"l2w.meta_batch={meta_batch}"]
    config, _ = resolve_config(EXPERIMENT, "tiny", overrides)
    splits = load_splits(config)
    seen = {}

    def spy(model, weight_net, optimizer, train, meta, q, mode, meta_loss):
        seen.update(train=train, meta=meta, mode=mode, meta_loss=meta_loss)
        raise _Stop

    monkeypatch.setattr(l2w, "meta_gradient", spy)
    model = build_model(config, splits)
    with pytest.raises(_Stop):
        train_method(method, model, splits, config, _context(tmp_path, config, method))
    assert (seen["mode"], seen["meta_loss"]) == (mode, form)

    def first_batch(stream):
        data = (splits.train_x, splits.train_y)
        return EpochBatches(data, config.batch_size, stream_seed(0, stream))(0)

    x, y = first_batch("train-batches")
    if meta_batch == "half":
        half = config.batch_size // 2
        expected = (x[:half], y[:half]), (x[half:], y[half:])
    else:
        expected = (x, y), first_batch("l2w-meta-batches")
    for got, want in zip((seen["train"], seen["meta"]), expected, strict=True):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_weight_log_counts_the_negative_weights_by_hand():
    from stopwise.tasks.multi_exit.methods import WeightLog

    log = WeightLog(3, updates=8)
    log.weights(torch.tensor([[-0.1, 1.0, 2.1], [0.5, -0.2, 0.0], [1.0, 1.0, 1.0]]))
    log.weights(torch.tensor([[-1.0, -1.0, 3.0]]))
    summary = log.summary()
    assert summary["negative_fraction"] == pytest.approx(4 / 12)  # 4 of 4 rows × 3 exits
    assert summary["negative_per_exit_fraction"] == pytest.approx([2 / 4, 2 / 4, 0.0])
    assert (summary["min_seen"], summary["max_seen"]) == (-1.0, 3.0)


def test_a_run_extended_across_the_run_for_real_change_still_reports(tiny_run):
    """Records made before 2026-12-05 ran one rule per budget, newer ones one per curve point;
    a run whose seeds mix the two (resumed or extended across the change) reports without
    point-by-point means of the rules run for real instead of failing after its training."""
    from stopwise.contract import read_result
    from stopwise.tasks.multi_exit.report import report

    config, _ = resolve_config(EXPERIMENT, "tiny", ["seeds=0,1"])
    results = [read_result(json.loads(p.read_text())) for p in (tiny_run / "jobs").glob("*.json")]
    older = [copy.deepcopy(r) for r in results]
    for r in older:
        r.seed, r.id = 1, r.id.replace("-s0", "-s1")
        for curve, rows in r.record.get("adaptive", {}).items():
            # one rule per budget, not checked against a curve point, as before
            r.record["adaptive"][curve] = [
                {k: v for k, v in row.items() if k != "matches_curve"} for row in rows[:3]
            ]
    lines = report(results + older, config).results["lines"]
    assert all(line["adaptive_accuracy_mean"] is None for line in lines)
    assert not any(line["adaptive_matches_curve"] for line in lines)


def test_bad_idx_data_exits_2_naming_the_file_before_or_when_read(tmp_path, capsys, monkeypatch):
    """Labels out of range are refused before anything is written (the label files are read
    whole by the config's check; they were found only when a job read them, after config.json
    and checkpoints/ were written). Truncated image data is seen only when a job reads the
    files: still exit 2 (DataError is a ConfigError) with the file named, no traceback. Fixed
    files then finish the run."""
    monkeypatch.delenv("STOPWISE_DATA", raising=False)
    folder = write_idx_folder(tmp_path / "idx", 60, 20, seed=0)
    good = (folder / "train-labels-idx1-ubyte").read_bytes()
    labels = np.full(60, 11, dtype=np.uint8)
    (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    args = ["run", "multi-exit", "--preset", "tiny", "--out", str(tmp_path / "r")]
    args += [x for item in [*IDX_RUN, f"data_dir={folder}"] for x in ("--set", item)]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "train-labels-idx1-ubyte: labels outside 0..9" in error and "Traceback" not in error
    assert not (tmp_path / "r").exists()
    (folder / "train-labels-idx1-ubyte").write_bytes(good)
    images = folder / "train-images-idx3-ubyte.gz"
    whole = gzip.decompress(images.read_bytes())
    images.unlink()
    (folder / "train-images-idx3-ubyte").write_bytes(whole[:-10])  # the header says 60 images
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "train-images-idx3-ubyte: IDX header says shape" in error and "Traceback" not in error
    (folder / "train-images-idx3-ubyte").write_bytes(whole)
    (folder / "train-labels-idx1-ubyte").write_bytes(good)
    assert main(args) == 0
