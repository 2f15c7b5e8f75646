"""A job reads only the config keys that decide its settings (contract.KeyGuard, on in the tests
through STOPWISE_CHECK_KEYS=1): its own keys, its dependencies' (whose settings' digests are in
its own), the runner's, a location key whose files' digest it carries, and `log_every`; anything
else is refused by name, whether read directly, inside a group or by a method of the config."""

from dataclasses import dataclass
from typing import ClassVar

import pytest

from stopwise.config import Config, ConfigError, group, param
from stopwise.contract import Job, JobContext, PlannedJob, RunDir
from stopwise.experiments import _settings_diff


@dataclass
class Inner:
    steps: int = param(3, ge=1)
    lr: float = param(0.1, gt=0)
    log_every: int = param(5, ge=1)


@dataclass
class GuardedConfig(Config):
    LOCATION_KEYS: ClassVar[tuple[str, ...]] = ("data_dir",)

    width: int = param(4, ge=1)
    depth: int = param(2, ge=1)
    data_dir: str = param("")
    stage: Inner = group(Inner)

    def area(self) -> int:
        return self.width * self.depth

    @property
    def twice_steps(self) -> int:
        return 2 * self.stage.steps


def context(tmp_path, reads, monkeypatch, check=True):
    if check:
        monkeypatch.setenv("STOPWISE_CHECK_KEYS", "1")
    else:
        monkeypatch.delenv("STOPWISE_CHECK_KEYS", raising=False)
    planned = PlannedJob("fit-s0", Job("fit", keys=("width",)), 0, {}, (), reads)
    return JobContext(RunDir(tmp_path), GuardedConfig(), planned, progress=False)


def test_declared_dependency_runner_location_and_logging_keys_are_read(tmp_path, monkeypatch):
    config = context(tmp_path, ("width", "stage.steps"), monkeypatch).config
    assert config.width == 4 and config.stage.steps == 3
    assert config.threads == 1 and config.seeds == [0] and config.data_dir == ""
    assert config.stage.log_every == 5
    assert config.twice_steps == 6  # a property reads through the guard


@pytest.mark.parametrize(
    "read, key",
    [
        (lambda c: c.depth, "depth"),
        (lambda c: c.stage.lr, "stage.lr"),
        (lambda c: c.area(), "depth"),  # a method reads through the guard too
    ],
)
def test_an_undeclared_key_is_refused_by_name(tmp_path, monkeypatch, read, key):
    config = context(tmp_path, ("width", "stage.steps"), monkeypatch).config
    with pytest.raises(ConfigError, match=f"job fit-s0 reads config key '{key}'"):
        read(config)


def test_a_whole_group_or_every_key_and_no_check_read_anything(tmp_path, monkeypatch):
    assert context(tmp_path, ("stage", "width", "depth"), monkeypatch).config.area() == 8
    assert context(tmp_path, ("stage",), monkeypatch).config.stage.lr == 0.1
    every = context(tmp_path, None, monkeypatch).config
    assert isinstance(every, GuardedConfig)  # keys=None: the config itself
    unchecked = context(tmp_path, ("width",), monkeypatch, check=False).config
    assert isinstance(unchecked, GuardedConfig)


def test_a_job_reads_its_dependencies_keys(tmp_path, monkeypatch):
    """plan_jobs gives a job the keys of every job it depends on, directly or not."""
    from stopwise.contract import Experiment, Report
    from stopwise.experiments import plan_jobs

    jobs = [
        Job("a", keys=("width",)),
        Job("b", after=("a",), keys=("depth",)),
        Job("c", after=("b",), keys=("stage.lr",)),
        Job("d", keys=None),
        Job("e", after=("d",), keys=("width",)),
    ]
    experiment = Experiment(
        name="guarded", description="", config=GuardedConfig, presets={"quick": {}},
        default_preset="quick", jobs=lambda config: jobs, run_job=lambda job, ctx: {},
        report=lambda results, config: Report({}, ""),
    )  # fmt: skip
    reads = {p.job.name: p.reads for p in plan_jobs(experiment, GuardedConfig())}
    assert reads == {
        "a": ("width",),
        "b": ("depth", "width"),
        "c": ("depth", "stage.lr", "width"),
        "d": None,
        "e": None,
    }


def test_a_key_a_job_no_longer_reads_is_no_difference_at_this_runs_value():
    """A finished job's settings name a key the job no longer lists: no difference when the run
    has it at the old value (or the default); a difference when it was changed."""
    old = {"config": {"width": 4, "timing": 5}, "params": {}}
    new = {"config": {"width": 4}, "params": {}}
    defaults = {"config.width": 4, "config.timing": 3}
    assert _settings_diff(old, new, defaults, current={"config.timing": 5}) == []
    assert _settings_diff(old, new, defaults, current={"config.timing": 3}) == [
        "config.timing: 5 -> (absent)"
    ]


def test_static_and_class_methods_of_the_config_still_work(tmp_path, monkeypatch):
    @dataclass
    class WithHelpers(GuardedConfig):
        @staticmethod
        def unit() -> int:
            return 1

        @classmethod
        def kind(cls) -> str:
            return cls.__name__

    monkeypatch.setenv("STOPWISE_CHECK_KEYS", "1")
    planned = PlannedJob("fit-s0", Job("fit", keys=("width",)), 0, {}, (), ("width",))
    config = JobContext(RunDir(tmp_path), WithHelpers(), planned, progress=False).config
    assert config.unit() == 1 and config.kind() == "WithHelpers"


def test_the_guard_behaves_like_the_config_for_what_is_not_a_key(tmp_path, monkeypatch):
    """Python's own protocols see an ordinary object: a missing name is an AttributeError
    (hasattr, getattr with a default), class constants are read, a copy is a guard too."""
    import copy

    config = context(tmp_path, ("width",), monkeypatch).config
    assert not hasattr(config, "no_such_name") and getattr(config, "nope", 7) == 7
    assert config.LOCATION_KEYS == ("data_dir",)
    copied = copy.deepcopy(config)
    assert copied.width == 4
    with pytest.raises(ConfigError, match="'depth'"):
        _ = copied.depth


def test_files_digest_names_a_file_it_cannot_read(tmp_path):
    from stopwise.config import DataError
    from stopwise.contract import files_digest

    (tmp_path / "a.png").write_bytes(b"1")
    (tmp_path / "b.png").symlink_to(tmp_path / "gone.png")
    assert files_digest({"a": tmp_path / "a.png"}).startswith("sha256:")
    with pytest.raises(DataError, match="cannot read .*b.png"):
        files_digest({"a": tmp_path / "a.png", "b": tmp_path / "b.png"})
