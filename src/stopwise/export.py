"""Deploying a stop model: one module that runs a step model with its policy and a threshold rule
in ``masked`` mode (a fixed trip count, each row keeping its prediction from its stop step, no
data-dependent shapes), so that
``torch.export`` — and ONNX through ``torch.onnx.export(..., dynamo=True)`` — can capture it.

    module = AdaptiveModule(model, policy, rule, valid_steps)
    program = export_adaptive(module, example_inputs)        # a torch.export.ExportedProgram
    predictions, stop_index = program.module()(inputs)       # equals run_adaptive(...)

The exported program computes every step for every row (that is what a fixed trip count means);
the wall-clock savings of adaptive inference come from ``shrink`` mode in eager PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any

import torch
from torch import nn

from .inference import MixedRule, Rule, ThresholdRule, _run_masked, _step_mask

__all__ = ["AdaptiveModule", "export_adaptive", "export_onnx"]


class AdaptiveModule(nn.Module):
    """``forward(inputs) -> (predictions (B, ...), stop_index (B,))``: the model, its policy and a
    threshold rule (or a :class:`~stopwise.inference.MixedRule` of two), run in masked mode;
    identical to ``run_adaptive(..., mode="masked")``."""

    def __init__(self, model, policy, rule: Rule, valid_steps: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(rule, (ThresholdRule, MixedRule)):
            raise ValueError(
                f"only threshold rules can be exported (a sampling rule draws random numbers); "
                f"got {rule!r}"
            )
        rule.check_steps(model.max_steps)
        self.model, self.policy, self.rule = model, policy, rule
        self.valid = _step_mask(valid_steps, model.max_steps).tolist()  # constants of the program

    def forward(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return _run_masked(self.model, self.policy, inputs, self.rule, self.valid)


def export_adaptive(
    module: AdaptiveModule, example_inputs: torch.Tensor, dynamic_batch: bool = True
) -> torch.export.ExportedProgram:
    """``torch.export`` the module for inputs shaped like ``example_inputs`` (a tensor), with a
    dynamic batch dimension unless ``dynamic_batch=False``."""
    _check_tensor(example_inputs, dynamic_batch)
    dynamic = {"inputs": {0: torch.export.Dim("batch", min=1)}} if dynamic_batch else None
    with torch.no_grad(), _in_eval(module):
        return torch.export.export(module, (example_inputs,), dynamic_shapes=dynamic)


def export_onnx(module: AdaptiveModule, example_inputs: torch.Tensor, path: str) -> None:
    """Write an ONNX file of the module (needs the optional ``onnx`` and ``onnxscript``)."""
    _check_tensor(example_inputs, dynamic_batch=True)
    dynamic = {"inputs": {0: torch.export.Dim("batch", min=1)}}
    # torch's exporter logs a warning per torchvision operator it cannot register when
    # torchvision is not installed: nothing a stop model uses.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), _in_eval(module):
            warnings.simplefilter("ignore", FutureWarning)  # the exporter, about its internals
            program = torch.onnx.export(
                module, (example_inputs,), dynamo=True, dynamic_shapes=dynamic, verbose=False
            )
    finally:
        registration.setLevel(level)
    program.save(path)


@contextlib.contextmanager
def _in_eval(module: nn.Module):
    """The module in eval mode (what is exported: BatchNorm's running statistics, no
    dropout), each submodule's train/eval flag as it was afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def _check_tensor(example_inputs: Any, dynamic_batch: bool) -> None:
    if not isinstance(example_inputs, torch.Tensor):
        raise TypeError(
            "example_inputs must be one tensor of inputs (a batch of what the model's start() "
            f"takes), not a {type(example_inputs).__name__}: export_adaptive(module, x[:8])"
        )
    if dynamic_batch and example_inputs.shape[0] < 2:
        raise ValueError(
            "a dynamic batch needs example_inputs of at least 2 rows (torch.export fixes a "
            "batch of 1 as a constant); the exported program then takes any batch size"
        )
