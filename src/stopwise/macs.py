"""Multiply-adds (MACs) of convolutions and linear layers, counted with forward hooks while a
module runs: the cost axis of budget curves and the policy-overhead checks. Elementwise work
(activations, norms, softmax) is not counted."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["layer_macs", "counting_macs", "count_macs"]


def layer_macs(layer: nn.Module, input: torch.Tensor, output: torch.Tensor) -> int:
    """MACs of one call of a conv or linear ``layer`` from ``input`` to ``output`` (the whole
    batch): a convolution with C_in input channels, G groups and a kernel of k elements does
    ``C_in/G · k`` per output element; a transposed one (the adjoint) ``C_out/G · k`` per input
    element; a linear layer ``in_features`` per output element; 0 for any other layer."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        per_input = layer.out_channels // layer.groups * math.prod(layer.kernel_size)
        return input.numel() * per_input
    if isinstance(layer, nn.modules.conv._ConvNd):
        per_output = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        return output.numel() * per_output
    if isinstance(layer, nn.Linear):
        return output.numel() * layer.in_features
    return 0


@contextmanager
def counting_macs(module: nn.Module) -> Iterator[list[int]]:
    """While open, every conv and linear layer of ``module`` adds its MACs to the last entry of
    the yielded list (``[0]`` at first); append a 0 to count what runs next apart."""
    counts = [0]

    def hook(layer, inputs, output):
        counts[-1] += layer_macs(layer, inputs[0], output)

    layers = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd | nn.Linear)]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """MACs of one forward of ``module`` on ``inputs`` (the whole batch), without gradients."""
    with torch.no_grad(), counting_macs(module) as counts:
        module(*inputs)
    return counts[-1]
