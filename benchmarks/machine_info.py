"""The machine and code a benchmark ran on, recorded in every benchmark's JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform

import torch

from stopwise.experiments import cpu_model, source_version


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **source_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


if __name__ == "__main__":
    print(json.dumps(machine(), indent=1))
