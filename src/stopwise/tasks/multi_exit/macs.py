"""Per-exit multiply-adds of a step model, counted once with forward hooks on a batch of one.

Convention: multiply-adds of convolutions and linear layers (batch norm, ReLU, pooling and the
softmax are not counted). A convolution with C_in input channels, G groups, a kernel of k
elements and an output of C_out × (output positions) does ``C_out · positions · C_in/G · k``
multiply-adds; a linear layer ``in · out`` per row. Step t's cost counts everything that runs in
``advance(state, t)``, which for :class:`~.model.MultiExitCNN` is block t *and* exit head t, so
the cumulative cost of stopping at exit k includes every earlier head, as it does at inference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...steps import StepModel

__all__ = ["module_macs", "count_step_macs"]


def module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one call of a conv or linear ``module`` that produced ``output``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        per_output = module.in_channels // module.groups * kernel
        return int(output.numel() // output.shape[0]) * per_output
    if isinstance(module, nn.Linear):
        rows = output.numel() // output.shape[-1] // output.shape[0]
        return rows * module.in_features * module.out_features
    return 0


@torch.no_grad()
def count_step_macs(model: StepModel, example: torch.Tensor) -> torch.Tensor:
    """``(T,)`` float64 cumulative multiply-adds per sample of stopping after step t.

    ``example`` is one input with its batch dimension (``(1, ...)``); the model runs once, in eval
    mode, step by step, while hooks on every conv and linear layer add up their work.
    """
    if example.shape[0] != 1:
        raise ValueError(f"count on a batch of one; got a batch of {example.shape[0]}")
    counted = [0]

    def hook(module, inputs, output):
        counted[0] += module_macs(module, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    was_training = model.training
    model.eval()
    try:
        state = model.start(example)
        per_step = []
        for t in range(model.max_steps):
            counted[0] = 0
            state = model.advance(state, t)
            model.predict(state, t)
            per_step.append(counted[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return torch.cumsum(torch.tensor(per_step, dtype=torch.float64), dim=0)
