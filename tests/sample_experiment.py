"""An out-of-tree experiment for the runner's tests, registered with ``--module``.

Jobs per seed: ``data`` (draws from a named stream), ``fit-a`` and ``fit-b`` (train a linear
model through the core loop, after ``data``) and ``summary`` (after both; reads their records and
a checkpoint). Environment hooks: SAMPLE_CALLS=<file> appends each job id that runs;
SAMPLE_KILL_AT=<job id>:<step> SIGKILLs the process at that training step of that job;
SAMPLE_STEP_SECONDS=<s> makes every training step busy the CPU for s seconds.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

import torch

from stopwise.config import Config, param
from stopwise.contract import Experiment, Job, JobContext, Report
from stopwise.reporting import new_figure
from stopwise.training import EpochBatches, fit_predictor


@dataclass
class SampleConfig(Config):
    steps: int = param(30, ge=1, help="training updates per fit job")
    lr: float = param(0.1, gt=0, help="SGD learning rate")
    rows: int = param(64, ge=8, help="training rows")
    title: str = param("sample", help="only the report reads it")
    fail: bool = param(False, help="make fit-a raise before its first checkpoint")


class Linear(torch.nn.Module):
    max_steps = 1

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)

    def start(self, x):
        return x

    def advance(self, state, t):
        return state

    def predict(self, state, t):
        return self.layer(state).squeeze(-1)


def jobs(config: SampleConfig) -> list[Job]:
    fit_keys = ("steps", "lr", "rows", "fail")
    return [
        Job("data", keys=("rows",)),
        Job("fit-a", params={"scale": 1.0}, after=("data",), keys=fit_keys),
        Job("fit-b", params={"scale": 2.0}, after=("data",), keys=fit_keys),
        Job("summary", after=("fit-a", "fit-b"), keys=()),
    ]


def _note(id: str) -> None:
    path = os.environ.get("SAMPLE_CALLS")
    if path:
        with open(path, "a") as f:
            f.write(id + "\n")


class Killing:
    """Batch source that SIGKILLs the process at SAMPLE_KILL_AT's step of this job."""

    def __init__(self, batches, id):
        self.batches, self.kill = batches, None
        target = os.environ.get("SAMPLE_KILL_AT", "")
        if target.rsplit(":", 1)[0] == id:
            self.kill = int(target.rsplit(":", 1)[1])

    def __call__(self, step):
        if step == self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        busy = time.process_time() + float(os.environ.get("SAMPLE_STEP_SECONDS", 0))
        while time.process_time() < busy:
            pass
        return self.batches(step)


def run_job(job: Job, context: JobContext) -> dict:
    _note(context.id)
    config: SampleConfig = context.config
    shared = torch.rand(3, generator=context.generator("shared")).tolist()
    if job.name == "data":
        return {"shared": shared}
    if job.name == "summary":
        a, b = context.dependency("fit-a").record, context.dependency("fit-b").record
        weights = context.checkpoint("fit", job="fit-a")["model"]["layer.weight"]
        return {"losses": [a["loss"], b["loss"]], "weight_norm": float(weights.norm())}
    if config.fail and job.name == "fit-a":
        raise RuntimeError("asked to fail")
    x = torch.randn(config.rows, 3, generator=context.generator("inputs"))
    y = job.params["scale"] * x.sum(-1)
    context.manual_seed("init")
    model = Linear()
    batches = Killing(EpochBatches((x, y), 8, context.stream_seed("batches")), context.id)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)

    def loss(predictions, targets):
        return (predictions - targets.unsqueeze(1)) ** 2

    with context.timed("fit"):
        metrics = fit_predictor(
            model,
            batches,
            loss,
            optimizer,
            config.steps,
            settings=context.loop_settings(5),
            stage="fit",
        )
    return {"loss": metrics["loss"], "shared": shared, "weight": model.layer.weight.tolist()}


def report(results, config: SampleConfig) -> Report:
    records = {r.id: r.record for r in results}
    figure, axes = new_figure(2, 2)
    axes.plot([0, 1], [0, 1])
    table = "| job | loss |\n|:---|---:|\n" + "\n".join(
        f"| {id} | {r['loss']:.4f} |" for id, r in records.items() if "loss" in r
    )
    return Report(
        {"title": config.title, "jobs": records}, table, {"line": figure}, f"{config.title}: done"
    )


EXPERIMENTS = [
    Experiment(
        name="sample",
        description="A four-job sample experiment for the runner's tests.",
        config=SampleConfig,
        presets={"quick": {}, "tiny": {"steps": 12}},
        jobs=jobs,
        run_job=run_job,
        report=report,
    )
]
