"""The README's API example runs as printed and does what it says."""

import re
from pathlib import Path

from stopwise.inference import run_fixed

README = Path(__file__).parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {"__name__": "readme"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = capsys.readouterr().out
    steps = float(re.search(r"([\d.]+) steps", printed).group(1))
    mse = float(re.search(r"test MSE ([\d.]+)", printed).group(1))
    assert steps <= 3.0 + 0.2  # calibrated on validation to a budget of 3 steps
    # The adaptive model beats running every input for the same 3 steps.
    fixed = run_fixed(namespace["model"], namespace["test_x"], 3)
    assert mse < namespace["per_step_loss"](fixed[:, None], namespace["test_y"]).mean().item()
