"""Stage I of the toy task, for the data-parallel test: ``[torchrun ...] ddp_job.py OUT``."""

import os
import sys

import torch

from stopwise.tasks.toy import RunningMean, sample_streams, squared_error
from stopwise.training import GeneratedBatches, LoopSettings, fit_oracle, is_main_process

if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        torch.distributed.init_process_group("gloo")
    rows_seen = []

    def loss_fn(predictions, targets):
        rows_seen.append(predictions.shape[0])
        return squared_error(predictions, targets)

    torch.manual_seed(0)
    model = RunningMean(6)
    batches = GeneratedBatches(lambda b, g: sample_streams(b, 6, [0.1, 1.0], g), 64, seed=1)
    settings = LoopSettings(checkpoint_dir=sys.argv[1], checkpoint_every=5, progress=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    fit_oracle(model, batches, loss_fn, optimizer, 20, beta=0.05, settings=settings)
    rank = os.environ.get("RANK", "0")
    open(f"{sys.argv[1]}/rows_rank{rank}.txt", "w").write(str(sum(rows_seen)))
    if is_main_process():
        torch.save(model.state_dict(), f"{sys.argv[1]}/final.pt")
