"""The step-model contract: a predictive model that runs one step at a time.

A step model turns ``inputs`` into a *state*, advances the state one step at a time and can
predict from the state after any step:

    state = model.start(inputs)
    for t in range(model.max_steps):
        state = model.advance(state, t)      # apply step t (0-based)
        y_t = model.predict(state, t)        # the prediction if we stopped after step t
        f_t = model.features(state, t)       # what a stopping policy may look at (never labels)
        y_t, f_t = model.observe(state, t)   # both at once (override to share work)

A state is a tensor or a (nested) tuple/list/dict of batch-first tensors, so the rows of any state
can be selected with :func:`index_state`; that is what lets inference drop finished rows.
A multi-exit network is a step model whose steps are blocks and whose predictions are exit heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "StepModel",
    "Trajectory",
    "unroll",
    "index_state",
    "cat_state",
    "state_batch_size",
    "state_device",
]

State = Any  # a tensor or nested tuple/list/dict of batch-first tensors


class StepModel(nn.Module):
    """Base class for step models. Subclasses set ``max_steps`` and implement ``start``,
    ``advance`` and ``predict``; ``features``, ``observe`` and ``step_costs`` have defaults.

    ``step_costs()`` returns a ``(T,)`` float tensor: the cumulative per-sample compute (for
    example multiply-adds) of stopping after step t, counting the prediction at t. The default
    counts steps (1, 2, ..., T).
    """

    max_steps: int

    def start(self, inputs: Any) -> State:
        raise NotImplementedError

    def advance(self, state: State, t: int) -> State:
        """The state after step ``t``: new tensors, never the old state's updated in place
        (earlier steps' predictions may still be held; :class:`StepStack` refuses it)."""
        raise NotImplementedError

    def predict(self, state: State, t: int) -> torch.Tensor:
        raise NotImplementedError

    def features(self, state: State, t: int) -> torch.Tensor:
        """``(B, F)`` policy features after step ``t``; by default the flattened prediction (a
        ``(B,)`` prediction, one number per row, is ``(B, 1)``)."""
        prediction = self.predict(state, t)
        return prediction.unsqueeze(1) if prediction.dim() == 1 else prediction.flatten(1)

    def observe(self, state: State, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prediction, features)`` after step ``t``, what adaptive inference reads at each
        step. Override it when the two share work (e.g. features computed from the prediction)."""
        return self.predict(state, t), self.features(state, t)

    def step_costs(self) -> torch.Tensor:
        return torch.arange(1, self.max_steps + 1, dtype=torch.float64)


@dataclass
class Trajectory:
    """All steps of one batch. ``predictions``: ``(B, T, ...)``; ``features``: ``(B, T, F)``."""

    predictions: torch.Tensor
    features: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        return self.predictions.shape[1]


def unroll(
    model: StepModel,
    inputs: Any,
    num_steps: int | None = None,
    with_features: bool = False,
) -> Trajectory:
    """Run every step (for training and dense evaluation) and stack per-step outputs.

    ``num_steps`` runs only the first steps (default ``model.max_steps``).
    """
    T = model.max_steps if num_steps is None else num_steps
    if not 1 <= T <= model.max_steps:  # (0 failed in torch.stack, T + 1 deep in the model)
        raise ValueError(f"num_steps must lie in 1..{model.max_steps}; got {num_steps}")
    state = model.start(inputs)
    predictions, features = StepStack("prediction"), StepStack("features")
    for t in range(T):
        state = model.advance(state, t)
        predictions.append(model.predict(state, t))
        if with_features:
            features.append(model.features(state, t))
    return Trajectory(predictions.stack(), features.stack() if with_features else None)


class StepStack:
    """Per-step tensors stacked along dim 1 at the end, refusing one that was changed in place
    after its step: a model whose ``advance`` updates its state in place (``s["y"] += …``) would
    otherwise leave every kept step holding the last step's values, silently."""

    def __init__(self, what: str):
        self.what, self.kept = what, []

    def append(self, tensor: torch.Tensor) -> None:
        t = len(self.kept)
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"step {t}'s {self.what} must be a tensor; got {type(tensor).__name__}"
            )
        if self.kept and tensor.shape != self.kept[0][0].shape:
            raise ValueError(
                f"every step's {self.what} must have the same shape; step {t}'s is "
                f"{tuple(tensor.shape)}, step 0's {tuple(self.kept[0][0].shape)}"
            )
        self.kept.append((tensor, None if tensor.is_inference() else tensor._version))

    def stack(self) -> torch.Tensor:
        for t, (tensor, version) in enumerate(self.kept):
            if version is not None and tensor._version != version:
                raise ValueError(
                    f"the {self.what} of step {t} was changed in place by a later step: "
                    "advance must return new tensors, not update the state in place"
                )
        return torch.stack([tensor for tensor, _ in self.kept], dim=1)


def _map_state(fn, *states: State) -> State:
    first = states[0]
    if len(states) > 1:  # combining: None in one state and a tensor in another is never dropped
        kinds = {type(s) for s in states}
        same = len(kinds) == 1 and (
            not isinstance(first, dict | tuple | list)
            or len({tuple(s) if isinstance(s, dict) else len(s) for s in states}) == 1
        )
        if not same:
            raise ValueError(f"states of different structure cannot be combined: {kinds}")
    if isinstance(first, torch.Tensor):
        return fn(*states)
    if isinstance(first, dict):
        return {k: _map_state(fn, *(s[k] for s in states)) for k in first}
    if isinstance(first, (tuple, list)):
        mapped = [_map_state(fn, *parts) for parts in zip(*states, strict=True)]
        return type(first)(mapped) if not hasattr(first, "_fields") else type(first)(*mapped)
    if first is None:
        return None
    raise TypeError(
        f"a state must be a tensor or a tuple/list/dict of tensors; found {type(first).__name__}"
    )


def index_state(state: State, rows: torch.Tensor) -> State:
    """Select batch rows (an index or boolean tensor, or a slice) from every tensor of a state.
    Each tensor keeps its memory layout (a channels-last feature map stays channels-last)."""
    if isinstance(rows, torch.Tensor) and rows.dtype != torch.bool:
        return _map_state(lambda x: _select_rows(x, rows), state)
    return _map_state(lambda x: x[rows], state)


def _select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    # index_select returns a contiguous (channels-first) tensor whatever its input: a
    # channels-last map would be transposed in the copy and the next convolution would take its
    # slow path. So a channels-last map is selected as the contiguous channels-last view it is
    # (N, H, W, C), and viewed back: the same layout, 5× faster than indexing x[rows] (which
    # also keeps it) on (1000, 16, 1, 20) maps.
    if _channels_last(x):
        last = x.dim() - 1
        to_last = (0, *range(2, x.dim()), 1)
        back = (0, last, *range(1, last))
        return x.permute(to_last).index_select(0, rows).permute(back)
    return x.index_select(0, rows)


def _channels_last(x: torch.Tensor) -> bool:
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return (
        x.dim() in formats
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=formats[x.dim()])
    )


def cat_state(states: list[State]) -> State:
    """Several states' rows, concatenated along the batch dimension."""
    return _map_state(lambda *parts: torch.cat(parts), *states)


def state_tensors(state: State) -> list[torch.Tensor]:
    """Every tensor of a (nested) state, in order."""
    found: list[torch.Tensor] = []
    _map_state(lambda x: found.append(x) or x, state)
    return found


def _first_tensor(state: State) -> torch.Tensor:
    found = state_tensors(state)
    if not found:
        raise ValueError("state holds no tensor")
    return found[0]


def state_batch_size(state: State) -> int:
    """The batch size of a state (that of its first tensor)."""
    return _first_tensor(state).shape[0]


def state_device(state: State) -> torch.device:
    """The device of a state (that of its first tensor)."""
    return _first_tensor(state).device
