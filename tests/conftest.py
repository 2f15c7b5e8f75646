import pytest
import torch

# Small CPU models are fastest, and results reproducible, with one intra-op thread.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """An uninterrupted ``tiny`` run of every registered experiment, shared by the contract and
    fault tests: {name: run directory}."""
    from test_experiment_contract import NAMES, stopwise, tiny

    runs = {}
    for name in NAMES:
        out = tmp_path_factory.mktemp(name) / "full"
        done = stopwise(tiny(name, out))
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = out
    return runs
