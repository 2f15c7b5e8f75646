"""Parity vectors (Graves 2016, §3.1), generated on the fly from a random stream.

A vector has ``n`` elements; ``k`` of them, at random positions, are set to ±1 (each sign with
probability 1/2) and the rest are 0, with ``k`` uniform on ``[lo, hi]``. The target is 1 when the
number of +1 elements is odd, else 0.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ParityBatch", "sample_parity", "evaluation_set", "first_training_batches"]


class ParityBatch(NamedTuple):
    """``x (B, n)`` float in {−1, 0, +1}; ``y (B,)`` float in {0, 1}; ``k (B,)`` long, the number
    of non-zero elements (the difficulty)."""

    x: torch.Tensor
    y: torch.Tensor
    k: torch.Tensor


def sample_parity(
    batch: int, n: int, k_range: tuple[int, int] | list[int], generator: torch.Generator
) -> ParityBatch:
    """Draw ``batch`` parity vectors of length ``n`` with ``k`` uniform on ``k_range`` (on CPU)."""
    if len(k_range) != 2:
        raise ValueError(f"a k range is [lo, hi]; got {list(k_range)}")
    lo, hi = int(k_range[0]), int(k_range[1])
    if not 1 <= lo <= hi <= n:
        raise ValueError(f"k range [{lo}, {hi}] must satisfy 1 <= lo <= hi <= n = {n}")
    k = torch.randint(lo, hi + 1, (batch,), generator=generator)
    # The k positions with the smallest uniform keys form a uniformly random k-subset.
    keys = torch.rand(batch, n, generator=generator)
    rank = keys.argsort(dim=-1).argsort(dim=-1)
    chosen = rank < k.unsqueeze(-1)
    signs = torch.randint(0, 2, (batch, n), generator=generator) * 2 - 1
    x = (chosen * signs).to(torch.float32)
    return ParityBatch(x, ((x > 0).sum(-1) % 2).to(torch.float32), k)  # 1: odd count of +1


def evaluation_set(config, split: str, generator: torch.Generator) -> ParityBatch:
    """The ``"validation"`` split (``val_size`` vectors, training k range) or the ``"test"`` split
    (``test_size`` vectors, test k range) of a :class:`~.config.ParityConfig`. A job draws each
    from the random stream of the same name (``context.generator(split)``)."""
    size, k_range = {
        "validation": (config.val_size, config.train_k),
        "test": (config.test_size, config.test_k),
    }[split]
    batch = sample_parity(size, config.n, k_range, generator)
    lo, hi = config.train_k
    if not bool(((batch.k >= lo) & (batch.k <= hi)).any()):  # only a small test set misses
        raise ValueError(
            f"the {size} {split} vectors drawn have no k in train_k={config.train_k}, so there "
            "is no interpolation accuracy to report: raise test_size"
        )
    return batch


def first_training_batches(config, generator: torch.Generator, batches: int) -> ParityBatch:
    """The first ``batches`` training batches of a job, concatenated (``batches × batch_size``
    vectors): the same draws, in the same order, as the training loop makes from ``generator``
    when it is seeded as the ``"train-batches"`` stream."""
    drawn = [
        sample_parity(config.batch_size, config.n, config.train_k, generator)
        for _ in range(batches)
    ]
    return ParityBatch(*(torch.cat(parts) for parts in zip(*drawn, strict=True)))
