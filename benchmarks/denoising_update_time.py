"""Milliseconds per training update of a DnCNN on one device: the plain update on the last
output (DnCNN) and the update with an exit head after every layer (uniform deep supervision,
L2S stage I), in float32 and under bfloat16 autocast. Patches are drawn as training draws them
(on the CPU, then moved), so the time is what a training stage pays per update.

Default: the `paper` preset's network, 20 layers × 64 channels, 256 patches of 50².

    .venv/bin/python benchmarks/denoising_update_time.py --device cuda \\
        --out benchmarks/results/denoising-gpu-h200/update_time.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from machine_info import machine  # noqa: E402

from stopwise.tasks.denoising.data import load_splits, sample_patches  # noqa: E402
from stopwise.tasks.denoising.models import DnCNN, noise_losses  # noqa: E402


def update_ms(args, precision: str, heads: bool) -> float:
    device = torch.device(args.device)
    images = load_splits("").train.images
    model = DnCNN(args.depth, args.width, precision, False).to(device)
    if heads:
        model.add_exit_heads("conv")
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(0)

    def update():
        noisy, noise = sample_patches(images, args.batch, args.patch, [35.0, 45.0, 55.0], generator)
        noisy, noise = noisy.to(device), noise.to(device)
        if heads:
            state, predicted = model.start(noisy), []
            for t in range(model.max_steps):
                state = model.advance(state, t)
                predicted.append(model.predict(state, t))
            loss = noise_losses(torch.stack(predicted, 1), noise).mean()
        else:
            loss = ((model(noisy) - noise) ** 2).flatten(1).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        update()
    synchronize()
    start = time.perf_counter()
    for _ in range(args.updates):
        update()
    synchronize()
    return 1e3 * (time.perf_counter() - start) / args.updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--patch", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--updates", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}}
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
        result["tf32_convolutions"] = torch.backends.cudnn.allow_tf32
    for precision in ("float32", "bfloat16"):
        for heads in (False, True):
            key = f"{precision}-{'heads' if heads else 'plain'}_ms"
            result[key] = round(update_ms(args, precision, heads), 2)
            print(key, result[key], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
