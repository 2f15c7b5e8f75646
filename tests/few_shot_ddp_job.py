"""MAML-stop meta-training on sinusoids for the data-parallel test: ``[torchrun ...]
few_shot_ddp_job.py OUT`` writes the starting and final weights and how many tasks this rank
adapted."""

import os
import sys

import torch

from stopwise.config import build
from stopwise.contract import stream_seed
from stopwise.tasks.few_shot import methods
from stopwise.tasks.few_shot.config import PRESETS, FewShotConfig
from stopwise.training import LoopSettings, is_main_process


class Context:
    """The parts of a JobContext that meta_train uses, for seed 0."""

    def __init__(self, out):
        self.out = out

    def manual_seed(self, stream):
        torch.manual_seed(self.stream_seed(stream))

    def stream_seed(self, stream):
        return stream_seed(0, stream)

    def loop_settings(self, log_every=50):
        return LoopSettings(checkpoint_dir=self.out, checkpoint_every=2, progress=False)


def weights(learner, policy):
    return {
        **{f"learner.{k}": v.detach().clone() for k, v in learner.state_dict().items()},
        **{f"policy.{k}": v.detach().clone() for k, v in policy.state_dict().items()},
    }


if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo")
    out = sys.argv[1]
    values = {**PRESETS["tiny"], "train": {"meta_steps": 6, "meta_batch": 4, "log_every": 1}}
    config = build(FewShotConfig, values)
    adapted = [0]
    original = methods.maml_stop_losses

    def counting(learner, policy, group, *args, **kwargs):
        adapted[0] += group[0].shape[0]
        return original(learner, policy, group, *args, **kwargs)

    methods.maml_stop_losses = counting
    context = Context(out)
    context.manual_seed("init")
    start = weights(*methods.build_models(config, with_policy=True))
    learner, policy = methods.meta_train(config, context, None, "maml-stop", config.steps)
    rank = os.environ.get("RANK", "0")
    with open(f"{out}/tasks_rank{rank}.txt", "w") as f:
        f.write(str(adapted[0]))
    if is_main_process():
        torch.save(start, f"{out}/start.pt")
        torch.save(weights(learner, policy), f"{out}/final.pt")
