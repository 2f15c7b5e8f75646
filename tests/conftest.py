import os

import pytest
import torch
from hypothesis import settings

from stopwise.experiments import load_module

# The property tests draw the same examples on every run, so that a red CI means a change broke
# something, not that a new random example turned up; HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
# Small CPU models are fastest, and results reproducible, with one intra-op thread.
torch.set_num_threads(1)
# Every job a test runs (in this process or a `stopwise` subprocess) may read only the config keys
# it declares (contract.KeyGuard): an undeclared key would let a changed value reuse old records.
os.environ["STOPWISE_CHECK_KEYS"] = "1"
# A user's own tasks, as `--module` takes them (docs/adding_a_task.md §6), separated like PATH:
# registered before any test module lists the experiments or the policies.
for _module in filter(None, os.environ.get("STOPWISE_TEST_MODULES", "").split(os.pathsep)):
    load_module(_module)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """An uninterrupted ``tiny`` run of each registered experiment, made the first time a test
    asks for it by a new ``stopwise`` interpreter and shared by the contract and fault tests (whose
    other runs are forked: forked.py): {name: run directory}. Lazy, so that
    a test worker (pytest-xdist) runs only the experiments of the tests it was given."""
    from test_experiment_contract import stopwise, tiny

    class Runs(dict):
        def __missing__(self, name):
            out = tmp_path_factory.mktemp(name) / "full"
            done = stopwise(tiny(name, out), fresh=True)  # the reference: a new interpreter
            assert done.returncode == 0, done.stderr[-3000:]
            self[name] = out
            return out

    return Runs()
