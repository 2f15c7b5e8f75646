"""The README's API example and its deployment example run as printed and do what they say; the
links of the README and docs/ resolve."""

import re
import subprocess
import sys
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


def test_readme_trained_model_example_reproduces_the_runs_test_steps(tmp_path, monkeypatch, capsys):
    """The example of loading a stop model from a run directory, on a tiny run at runs/demo:
    it prints the mean steps the run recorded on test for the budget point it picks."""
    from stopwise.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["run", "sparse-recovery", "--preset", "tiny", "--out", "runs/demo", "--set"]
    assert main([*args, "progress=false"]) == 0
    capsys.readouterr()
    namespace = {"__name__": "readme"}
    exec(compile(python_blocks()[3], "README.md", "exec"), namespace)
    printed = float(re.search(r"([\d.]+) mean steps", capsys.readouterr().out).group(1))
    trained = namespace["trained"]
    assert namespace["rule"] is trained.budgets[-1].rule  # tiny: 8 steps, every point ≤ 10
    assert printed == pytest.approx(trained.budgets[-1].test["mean_steps"], abs=0.005)


def test_names_the_docs_give_resolve_after_a_plain_import_stopwise():
    """`stopwise.selection.budget_sweep` in the README or the adding-a-task page works after
    `import stopwise` alone (it raised AttributeError: the module was not imported), checked in
    a fresh interpreter, where no test has imported the submodules. Not checked: the task
    packages and `stopwise.export` (the docs import them explicitly)."""
    docs = [README, README.parent / "docs" / "adding_a_task.md"]
    names = {
        name
        for doc in docs
        for name in re.findall(r"\bstopwise(?:\.[A-Za-z_]\w*)+", doc.read_text())
        if not name.startswith(("stopwise.tasks", "stopwise.export"))
    }
    assert "stopwise.selection.budget_sweep" in names
    check = "import functools, stopwise, sys\n" + "".join(
        f"functools.reduce(getattr, {name.split('.')[1:]!r}, stopwise)\n" for name in sorted(names)
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_layout_section_names_every_core_module_and_task():
    """Issue 11: the README's layout matches the tree (a module added without a line there,
    datasets.py, went unnoticed once)."""
    layout = README.read_text().split("## Layout", 1)[1].split("```")[1]
    source = README.parent / "src" / "stopwise"
    modules = {p.name for p in source.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    tasks = {f"{p.name}/" for p in (source / "tasks").iterdir() if (p / "__init__.py").is_file()}
    listed = set(re.findall(r"^\s+(\S+\.py|\w+/)\s", layout, flags=re.M))
    assert modules <= listed and tasks <= listed, (modules | tasks) - listed


def heading_anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation but '-' and '_' dropped,
    spaces to '-', a repeated anchor numbered -1, -2, ... (code blocks hold no heading)."""
    anchors, seen = set(), {}
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(f"{anchor}-{seen[anchor]}" if anchor in seen else anchor)
        seen[anchor] = seen.get(anchor, 0) + 1
    return anchors


def test_every_relative_link_of_the_readme_and_docs_resolves():
    """A link to a file that is not in the repository, or to a heading that is not on its page
    (a renamed section), is found here rather than by a reader."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken
