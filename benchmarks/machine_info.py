"""The machine a benchmark ran on, recorded in every benchmark's JSON."""

from __future__ import annotations

import datetime
import os
import platform

import torch


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
