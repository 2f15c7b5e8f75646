"""The README's API example and its deployment example run as printed and do what they say."""

import re
from pathlib import Path

import pytest
import torch

from stopwise.inference import run_adaptive, run_fixed

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def api_example() -> dict:
    namespace = {"__name__": "readme"}
    exec(compile(python_blocks()[0], "README.md", "exec"), namespace)
    return namespace


def test_readme_api_example_runs(capsys):
    namespace = api_example()
    printed = capsys.readouterr().out
    steps = float(re.search(r"([\d.]+) steps", printed).group(1))
    mse = float(re.search(r"test MSE ([\d.]+)", printed).group(1))
    assert steps <= 3.0 + 0.2  # calibrated on validation to a budget of 3 steps
    # The adaptive model beats running every input for the same 3 steps.
    fixed = run_fixed(namespace["model"], namespace["test_x"], 3)
    assert mse < namespace["per_step_loss"](fixed[:, None], namespace["test_y"]).mean().item()


def test_readme_deployment_example_gives_masked_modes_predictions_and_stops(tmp_path, monkeypatch):
    pytest.importorskip("onnxscript")
    namespace = api_example()
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks()[1], "README.md", "exec"), namespace)
    model, policy, rule, test_x = (namespace[k] for k in ("model", "policy", "rule", "test_x"))
    with torch.no_grad():
        masked = run_adaptive(model, policy, test_x, rule, mode="masked")
    assert torch.equal(namespace["stop_index"], masked.stop_index)
    assert torch.allclose(namespace["predictions"], masked.predictions, atol=1e-6)
    assert (tmp_path / "stop_model.onnx").is_file()


def test_readme_chunked_scoring_example_matches_dense_mode():
    namespace = api_example()
    exec(compile(python_blocks()[2], "README.md", "exec"), namespace)
    model, policy, rule, rows = (namespace[k] for k in ("model", "policy", "rule", "rows"))
    with torch.no_grad():
        dense = run_adaptive(model, policy, rows, rule, mode="dense")
    assert torch.equal(namespace["result"].stop_index, dense.stop_index)
    assert torch.allclose(namespace["result"].predictions, dense.predictions, atol=1e-6)
