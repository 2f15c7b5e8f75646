"""Masked mode keeps a fixed trip count, so a stop model exports: torch.export (and ONNX when the
optional extra is installed) gives the predictions and stop steps of run_adaptive, for any batch
size, every threshold rule and a mask of pruned exits."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_inference import make

import stopwise
from stopwise.export import AdaptiveModule, export_adaptive, export_onnx
from stopwise.inference import (
    CumulativeThreshold,
    HazardThreshold,
    MixedRule,
    SampleRule,
    ScoreThreshold,
    run_adaptive,
)
from stopwise.tasks.toy import RunningMean, sample_streams


def rules(steps: int) -> list:
    """Every kind of exportable rule, per-step thresholds for a model of ``steps`` steps."""
    per_step = ScoreThreshold(torch.linspace(-1, 1, steps))
    return [
        HazardThreshold(0.5),
        CumulativeThreshold(0.7),
        per_step,
        MixedRule(HazardThreshold(0.3), per_step, 0.4),
    ]


def toy():
    torch.manual_seed(0)
    model = RunningMean(6).eval()
    policy = stopwise.create_policy("mlp", feature_dim=2, max_steps=6, hidden=(8,)).eval()
    z, _ = sample_streams(40, 6, [0.1, 1.0], torch.Generator().manual_seed(1))
    return model, policy, z


@pytest.mark.parametrize("rule", rules(7), ids=lambda r: type(r).__name__)
def test_exported_program_equals_run_adaptive(rule):
    model, policy, x = make(seed=2, batch=40)  # a dict state, class logits
    valid = torch.tensor([False, True, True, False, True, True, True])
    program = export_adaptive(AdaptiveModule(model, policy, rule, valid), x)
    for rows in (40, 7, 1):
        predictions, stop = program.module()(x[:rows])
        expected = run_adaptive(model, policy, x[:rows], rule, "shrink", valid)
        assert torch.equal(stop, expected.stop_index)
        torch.testing.assert_close(predictions, expected.predictions)


def test_an_example_batch_of_one_row_is_a_clear_error():
    model, policy, z = toy()
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_adaptive(AdaptiveModule(model, policy, HazardThreshold(0.5)), z[:1])


def test_sampling_rules_are_not_exported():
    model, policy, _ = toy()
    with pytest.raises(ValueError, match="only threshold rules"):
        AdaptiveModule(model, policy, SampleRule(0))


@pytest.mark.parametrize("rule", rules(6)[::3], ids=lambda r: type(r).__name__)
def test_onnx_export_runs_in_onnxruntime(tmp_path, rule):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model, policy, z = toy()
    export_onnx(AdaptiveModule(model, policy, rule), z, str(tmp_path / "toy.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "toy.onnx"))
    name = session.get_inputs()[0].name
    for rows in (40, 3):
        predictions, stop = session.run(None, {name: z[:rows].numpy()})
        with torch.no_grad():
            expected = run_adaptive(model, policy, z[:rows], rule, "shrink")
        assert stop.tolist() == expected.stop_index.tolist()
        torch.testing.assert_close(torch.from_numpy(predictions), expected.predictions)


def test_onnx_export_prints_nothing_about_torchvision(tmp_path):
    """torch's exporter logged a warning per torchvision operator it could not register (four
    lines on every export without torchvision); a fresh process, since it says so only once."""
    pytest.importorskip("onnxscript")
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from test_export import toy; "
        "from stopwise.export import AdaptiveModule, export_onnx; "
        "from stopwise.inference import HazardThreshold; model, policy, z = toy(); "
        f"export_onnx(AdaptiveModule(model, policy, HazardThreshold(0.5)), z, {str(tmp_path / 'm.onnx')!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torchvision" not in done.stderr, done.stderr[-2000:]


def test_exporting_leaves_the_model_in_the_mode_it_was_in():
    model, policy, x = make(seed=2, batch=40)
    model.train(), policy.eval()
    export_adaptive(AdaptiveModule(model, policy, HazardThreshold(0.5)), x)
    assert model.training and all(m.training for m in model.modules())
    assert not policy.training


def test_a_threshold_per_step_of_another_length_is_refused():
    model, policy, _ = make()
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        AdaptiveModule(model, policy, ScoreThreshold(torch.zeros(9)))


def test_the_adaptive_module_compiles_as_one_graph():
    """README: masked mode compiles. ``fullgraph=True`` fails on any graph break (a
    data-dependent shape, a ``.tolist()``); the ``aot_eager`` backend traces forward and
    backward graphs as inductor would, without its minutes of C++ compilation."""
    torch._dynamo.reset()
    model, policy, x = make(seed=2, batch=40)
    valid = torch.tensor([False, True, True, False, True, True, True])
    rule = MixedRule(HazardThreshold(0.3), ScoreThreshold(torch.linspace(-1, 1, 7)), 0.4)
    compiled = torch.compile(
        AdaptiveModule(model, policy, rule, valid), fullgraph=True, backend="aot_eager"
    )
    predictions, stop = compiled(x)
    expected = run_adaptive(model, policy, x, rule, "shrink", valid)
    assert torch.equal(stop, expected.stop_index)
    torch.testing.assert_close(predictions, expected.predictions)
