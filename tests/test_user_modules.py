"""A user's own experiment module on the command line (``--module``): the ways it can be named,
the errors it can raise, and that its report is rebuilt when any module of its package changes."""

import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from stopwise import experiments
from stopwise.curves import dominance_line
from stopwise.reporting import format_number

SAMPLE = Path(__file__).with_name("sample_experiment.py")


def stopwise(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "stopwise.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def make_package(folder: Path, name: str = "mytasks") -> Path:
    package = folder / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from .task import EXPERIMENTS\n")
    (package / "task.py").write_text(SAMPLE.read_text())
    return package


def test_a_package_is_found_by_dotted_name_from_the_current_folder_or_by_path(tmp_path):
    package = make_package(tmp_path)
    by_name = stopwise("list", "--module", "mytasks.task", cwd=tmp_path)
    assert by_name.returncode == 0 and "sample" in by_name.stdout, by_name.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for path in (package, package / "__init__.py"):
        by_path = stopwise("show", "sample", "--module", str(path), cwd=elsewhere)
        assert by_path.returncode == 0 and "steps: an integer" in by_path.stdout, by_path.stderr


def test_a_package_in_a_folder_with_a_space_runs_with_worker_processes(tmp_path):
    """The workers import the runner's modules; a path with a space was dropped from that list
    (taken for an entry point's name), and the run stopped: unknown experiment (an audit)."""
    package = make_package(tmp_path / "my tasks")
    args = ["run", "sample", "--module", str(package), "--preset", "tiny", "--out", "out"]
    args += ["--set", "workers=2", "--set", "seeds=0,1", "--set", "progress=false"]
    done = stopwise(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "out" / "jobs").glob("*.json"))) >= 2


def test_a_copy_of_the_toy_folder_runs_as_a_users_own_task(tmp_path):
    """adding_a_task.md: copy the toy folder, rename it, run it with --module; the command the
    run prints for its stop models works as printed (it lacked the --module and failed:
    unknown experiment)."""
    import shutil

    import stopwise.tasks.toy as toy

    copy = tmp_path / "mytoy"
    shutil.copytree(Path(toy.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "__init__.py"
    init.write_text(init.read_text().replace('name="toy"', 'name="mytoy"'))
    args = ["run", "mytoy", "--module", "mytoy", "--preset", "tiny", "--out", "my run"]
    done = stopwise(*args, "--set", "progress=false", cwd=tmp_path)
    assert done.returncode == 0 and "| L2S policy" in done.stdout, done.stderr
    hint = re.search(r"its stop models: stopwise (stops .*); in Python", done.stdout).group(1)
    assert hint.endswith(" --module mytoy")
    stops = stopwise(*shlex.split(hint), cwd=tmp_path)
    assert stops.returncode == 0 and stops.stdout.startswith("l2s: "), stops.stderr


def test_a_module_that_fails_to_import_exits_2_naming_the_error_and_where(tmp_path):
    (tmp_path / "broken.py").write_text(
        "import math\n\nx = 1\nraise RuntimeError('no data here')\n"
    )
    done = stopwise("list", "--module", "broken.py", cwd=tmp_path)
    assert done.returncode == 2
    assert "--module broken.py: RuntimeError: no data here" in done.stderr
    assert "broken.py:4" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "needs.py").write_text("import no_such_dependency\n")
    done = stopwise("list", "--module", "needs", cwd=tmp_path)
    assert done.returncode == 2 and "No module named 'no_such_dependency'" in done.stderr
    assert f"{tmp_path / 'needs.py'}:1" in done.stderr  # the user's line, not importlib's
    (tmp_path / "typo.py").write_text("x = 1\ndef f(:\n    pass\n")
    done = stopwise("list", "--module", "typo.py", cwd=tmp_path)
    assert done.returncode == 2 and f"SyntaxError: invalid syntax ({tmp_path / 'typo.py'}:2)" in (
        done.stderr
    )
    assert "frozen" not in done.stderr


def test_a_user_module_cannot_take_a_built_in_name(tmp_path):
    text = SAMPLE.read_text().replace('name="sample"', 'name="toy"')
    assert 'name="toy"' in text
    (tmp_path / "clash.py").write_text(text)
    done = stopwise("list", "--module", "clash.py", cwd=tmp_path)
    assert done.returncode == 2
    assert "experiment 'toy' is already registered by stopwise.tasks.toy" in done.stderr


def test_experiments_that_are_not_experiments_exit_2(tmp_path):
    (tmp_path / "odd.py").write_text("EXPERIMENTS = [1]\n")
    done = stopwise("list", "--module", "odd.py", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "EXPERIMENTS holds 1, not a stopwise.contract.Experiment" in done.stderr
    assert "Traceback" not in done.stderr


def test_report_code_digest_covers_the_reports_whole_package(tmp_path, monkeypatch):
    package = tmp_path / "mypkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "report.py").write_text(
        "from ..labels import LABEL\n\ndef report(results, config):\n    return LABEL\n"
    )
    (package / "labels.py").write_text("LABEL = 'a'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from mypkg.sub import report

    experiment = SimpleNamespace(report=report.report)
    before = experiments._report_code(experiment)
    (package / "labels.py").write_text("LABEL = 'b'\n")  # a helper the report imports
    assert experiments._report_code(experiment) != before


def test_minus_zero_prints_as_zero():
    assert format_number(-0.0, "+.3g") == "+0" and format_number(-0.5, "+.3g") == "-0.5"
    verdict = {"worst_gain": -0.0, "worst_gain_at": 1.0, "best_lower_half_gain": -0.0,
               "best_lower_half_at": 1.0, "met": False, "seeds": 1}  # fmt: skip
    line = dominance_line("x", verdict, "MSE")
    assert "-0 " not in line and "+0 MSE at 1 steps" in line


def test_show_into_a_closed_pipe_ends_quietly(tmp_path):
    """``stopwise show NAME | head -1``: the reader is gone before the command writes."""
    shown = subprocess.Popen(
        [sys.executable, "-m", "stopwise.cli", "show", "toy"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    shown.stdout.close()
    _, errors = shown.communicate(timeout=120)
    assert "Traceback" not in errors and shown.returncode == 141


def test_the_config_shown_in_adding_a_task_is_toys_own():
    """docs/adding_a_task.md §1 prints a shortened toy config: every key it shows has toy's
    default, and its presets are toy's (a copied snippet behaves like the copied folder)."""
    import dataclasses
    import re

    from stopwise.tasks.toy import config as toy

    doc = (Path(__file__).parents[1] / "docs" / "adding_a_task.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "Config)" in b)
    namespace: dict = {"__name__": "doc_config"}
    exec(compile(block, "adding_a_task.md", "exec"), namespace)
    shown, real = namespace["ToyConfig"](), toy.ToyConfig()
    for field in dataclasses.fields(shown):
        value, expected = getattr(shown, field.name), getattr(real, field.name)
        if dataclasses.is_dataclass(value):  # a group: the doc's class, equal field by field
            value, expected = dataclasses.asdict(value), dataclasses.asdict(expected)
        assert value == expected, field.name
    assert namespace["PRESETS"] == toy.PRESETS


def test_a_bad_experiment_declaration_is_reported_at_the_users_line(tmp_path):
    text = SAMPLE.read_text().replace('"tiny": {"steps": 12}', '"tiny": {"stepz": 12}')
    assert '"stepz"' in text
    (tmp_path / "badpreset.py").write_text(text)
    done = stopwise("list", "--module", "badpreset.py", cwd=tmp_path)
    assert done.returncode == 2 and "stepz" in done.stderr
    line = next(i for i, s in enumerate(text.splitlines(), 1) if "Experiment(" in s)
    # the line of the user's Experiment(...) call, not the check inside stopwise that refused it
    assert f"{tmp_path / 'badpreset.py'}:{line})" in done.stderr, done.stderr


def test_a_package_inside_a_package_is_imported_by_its_dotted_name_from_any_path(tmp_path):
    """Given as a folder or a file, a task inside a package was imported under its last name
    alone: the same files loaded twice (and refused as registered twice) when also named by
    its dotted name, or installed through an entry point (an audit)."""
    outer = tmp_path / "outer"
    outer.mkdir()
    (outer / "__init__.py").write_text("")
    package = make_package(outer)
    (outer / "single.py").write_text(SAMPLE.read_text().replace('"sample"', '"single"'))
    ways = [
        ["--module", "outer.mytasks.task", "--module", str(package)],
        ["--module", str(package / "task.py"), "--module", "outer.mytasks"],
        ["--module", str(outer / "single.py"), "--module", "outer.single"],
    ]
    for modules in ways:
        listed = stopwise("list", *modules, cwd=tmp_path)
        assert listed.returncode == 0, (modules, listed.stderr[-1000:])
    # a file whose name is no module name (task.v2.py) is still read from its path
    (outer / "task.v2.py").write_text(SAMPLE.read_text().replace('"sample"', '"versioned"'))
    listed = stopwise("list", "--module", str(outer / "task.v2.py"), cwd=tmp_path)
    assert listed.returncode == 0 and "versioned" in listed.stdout, listed.stderr[-1000:]
