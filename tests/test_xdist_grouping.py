"""The contract tests share each experiment's uninterrupted tiny run (conftest.py) by running on
one test worker, which `--dist loadgroup` arranges from their `xdist_group` marks. With pytest 9.2
and pytest-xdist 3.8 the marks were silently ignored (pytest-xdist#1386): every worker made its
own copies of the runs. This checks the grouping itself, on a throwaway test file."""

import subprocess
import sys


def test_a_group_of_tests_runs_on_one_worker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_grouped.py").write_text(
        "import os\n"
        "from pathlib import Path\n"
        "import pytest\n\n"
        "@pytest.mark.xdist_group('shared')\n"
        "@pytest.mark.parametrize('i', range(8))\n"
        "def test_where(i):\n"
        "    Path(f'ran-{i}').write_text(os.environ['PYTEST_XDIST_WORKER'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
         "--dist", "loadgroup", "test_grouped.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = {(tmp_path / f"ran-{i}").read_text() for i in range(8)}
    assert len(workers) == 1, f"one xdist_group ran on workers {sorted(workers)}"
