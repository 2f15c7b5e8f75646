"""docs/learned_optimizers.md's API example runs as printed (under 30 lines): it meta-trains the
LSTM optimizer on a user-defined family and then trains an nn.Linear with it, closing most of the
gap between the model's starting loss and the least-squares optimum."""

import re
from pathlib import Path

import torch

DOCS = Path(__file__).parents[1] / "docs" / "learned_optimizers.md"


def test_docs_api_example_meta_trains_and_optimizes_a_model(capsys):
    block = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.S)[0]
    code_lines = [line for line in block.splitlines() if line.strip()]
    assert len(code_lines) < 30, f"the example has {len(code_lines)} lines"
    namespace = {"__name__": "docs"}
    exec(compile(block, "docs/learned_optimizers.md", "exec"), namespace)
    found = re.search(r"loss ([\d.]+) at the start, ([\d.]+) after", capsys.readouterr().out)
    start, final = float(found.group(1)), float(found.group(2))
    x, y = namespace["x"], namespace["y"]
    design = torch.cat([x, torch.ones(len(x), 1)], 1)
    solution = torch.linalg.lstsq(design, y).solution
    optimum = torch.nn.functional.mse_loss(design @ solution, y).item()
    assert final - optimum < 0.1 * (start - optimum)
    assert isinstance(namespace["optimizer"], torch.optim.Optimizer)
