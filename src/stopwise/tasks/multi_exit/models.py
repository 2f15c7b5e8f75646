"""The multi-exit step model, its per-exit multiply-adds and the L2S exit policy.

:class:`MultiExitCNN` is a small MSDNet-like CNN written as a step model: step k runs block k and
exit head k. Block k maps the feature map of block k−1 to a coarser one (two 3×3 convolutions,
the first possibly strided, each followed by batch norm and ReLU); exit head k (a strided 3×3
convolution, batch norm, ReLU, global average pooling and a linear layer, like MSDNet's
classifiers, Huang et al. 2018 §4) turns it into class logits. The same code builds the 2-D
network for images ``(B, 1, H, W)`` and the 1-D one for signals ``(B, 1, L)``. The state is
``{"h": feature map, "logits": (B, C)}``; ``predict`` (and so the default ``features``) returns
the logits of exit t (a stopping policy sees only them).

:func:`count_step_macs` counts the multiply-adds of convolutions and linear layers (batch norm,
ReLU, pooling and the softmax are not counted) once, with forward hooks on a batch of one.
Step t counts everything in ``advance(state, t)``, block t *and* exit head t, so the cumulative
cost of stopping at exit k includes every earlier head, as it does at inference.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...macs import counting_macs
from ...policies import MLPPolicy, classifier_features, register_policy
from ...steps import StepModel, unroll

__all__ = [
    "BatchNorm",
    "ConvBNReLU",
    "ExitHead",
    "MultiExitCNN",
    "exit_losses",
    "running_stats_frozen",
    "count_step_macs",
    "count_policy_macs",
    "fold_batchnorm",
    "fold_stem",
    "inference_copy",
    "fastest_inference_copy",
    "layout_text",
    "signals_as_images",
    "SignalTapConv",
    "ExitPolicy",
]


class BatchNorm(nn.Module):
    """Batch normalisation over channel dim 1 of ``(B, C, ...)`` (1-D or 2-D feature maps).

    Same arithmetic as ``nn.BatchNorm{1,2}d``. While ``update_stats`` is False (see
    :func:`running_stats_frozen`), training-mode calls normalise with the batch statistics as
    usual but leave the running statistics untouched, so a virtual forward pass (L2W's meta step)
    cannot change the model's buffers. It also keeps ``torch.func`` transforms free of in-place
    buffer updates.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.momentum, self.eps, self.update_stats = 0.1, 1e-5, True  # nn.BatchNorm's defaults
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        track = not self.training or self.update_stats
        stats = (self.running_mean, self.running_var) if track else (None, None)
        return F.batch_norm(
            x, *stats, self.weight, self.bias, self.training, self.momentum, self.eps
        )


@contextmanager
def running_stats_frozen(model: nn.Module) -> Iterator[None]:
    """Within the block, training-mode forwards of ``model`` do not update BN running stats."""
    norms = [m for m in model.modules() if isinstance(m, BatchNorm)]
    previous = [m.update_stats for m in norms]
    for m in norms:
        m.update_stats = False
    try:
        yield
    finally:
        for m, flag in zip(norms, previous, strict=True):
            m.update_stats = flag


def _conv(dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d if dims == 1 else nn.Conv2d)(*args, **kwargs)


class ConvBNReLU(nn.Sequential):
    """3×3 (or length-3) convolution without bias, batch norm, ReLU."""

    def __init__(self, dims: int, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(
            _conv(dims, in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            BatchNorm(out_channels),
            nn.ReLU(inplace=True),
        )


class ExitHead(nn.Module):
    """Exit classifier: strided ConvBNReLU, global average pooling, linear → ``(B, classes)``."""

    def __init__(self, dims: int, in_channels: int, width: int, classes: int):
        super().__init__()
        self.conv = ConvBNReLU(dims, in_channels, width, stride=2)
        self.linear = nn.Linear(width, classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(self.conv(h).flatten(2).mean(-1))


class MultiExitCNN(StepModel):
    """K-exit CNN. Args:

    dims: 2 for images ``(B, 1, H, W)`` (or ``(B, H, W)``), 1 for signals ``(B, 1, L)`` / ``(B, L)``.
    channels: width of each block (K = len(channels) exits).
    strides: stride of the first convolution of each block.
    head_width: channels of each exit head's convolution.
    classes: number of classes.
    stem: space-to-depth factor f applied to the input first (``pixel_unshuffle``: an image
        ``(1, H, W)`` becomes ``(f², H/f, W/f)``, a signal ``(1, L)`` becomes ``(f, L/f)``); it
        has no weights and no multiply-adds, and keeps early feature maps small, so that the
        time of each block follows its multiply-adds on a CPU.
    """

    def __init__(
        self,
        dims: int = 2,
        channels: Sequence[int] = (16, 32, 48, 64),
        strides: Sequence[int] = (2, 2, 1, 2),
        head_width: int = 32,
        classes: int = 10,
        in_channels: int = 1,
        stem: int = 1,
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 (signals) or 2 (images); got {dims}")
        if len(channels) < 2 or len(channels) != len(strides):
            raise ValueError(
                f"channels {list(channels)} and strides {list(strides)} need the same length >= 2"
            )
        if min(*channels, head_width, classes, in_channels, stem) < 1 or min(strides) < 1:
            raise ValueError("channels, strides, head_width, classes, stem must all be >= 1")
        self.dims, self.classes, self.in_channels, self.stem = dims, classes, in_channels, stem
        self.max_steps = len(channels)
        widths = [in_channels * stem**dims, *channels]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                ConvBNReLU(dims, widths[k], widths[k + 1], stride=strides[k]),
                ConvBNReLU(dims, widths[k + 1], widths[k + 1]),
            )
            for k in range(self.max_steps)
        )
        self.heads = nn.ModuleList(ExitHead(dims, c, head_width, classes) for c in channels)
        self._step_costs: torch.Tensor | None = None
        # The first step (0-based) whose feature maps are channels-last (see inference_copy);
        # a 1-D network's are height-one images from there on (signals_as_images).
        self.channels_last_from: int | None = None
        # What each channels-last switch took, where fastest_inference_copy chose this one.
        self.layout_seconds: dict[str, float] | None = None

    # -- the step-model contract
    def start(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        want = 2 + self.dims
        if x.dim() == want - 1 and self.in_channels == 1:
            x = x.unsqueeze(1)
        if x.dim() != want or x.shape[1] != self.in_channels:
            shape = "(B, 1, H, W) or (B, H, W)" if self.dims == 2 else "(B, 1, L) or (B, L)"
            raise ValueError(f"expected inputs of shape {shape}; got {tuple(x.shape)}")
        f = self.stem
        if f > 1:
            if any(size % f for size in x.shape[2:]):
                raise ValueError(f"input size {tuple(x.shape[2:])} is not divisible by stem={f}")
            if self.dims == 2:
                x = F.pixel_unshuffle(x, f)
            else:  # (B, C, L) -> (B, C·f, L/f), the 1-D pixel unshuffle
                B, C, L = x.shape
                x = x.view(B, C, L // f, f).permute(0, 1, 3, 2).reshape(B, C * f, L // f)
        return {"h": x, "logits": x.new_zeros(x.shape[0], self.classes)}

    def advance(self, state: dict[str, torch.Tensor], t: int) -> dict[str, torch.Tensor]:
        h = self.blocks[t](self.block_input(state["h"], t))
        return {"h": h, "logits": self.heads[t](h)}

    def block_input(self, h: torch.Tensor, t: int) -> torch.Tensor:
        """The map block ``t`` reads: ``h``, turned channels-last (a signal into a height-one
        image first) at step ``channels_last_from`` (see :func:`inference_copy`)."""
        if t != self.channels_last_from:
            return h
        if self.dims == 1:  # (B, C, L) -> (B, C, 1, L)
            h = h.unsqueeze(2)
        return h.contiguous(memory_format=torch.channels_last)

    def predict(self, state: dict[str, torch.Tensor], t: int) -> torch.Tensor:
        return state["logits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, K, C)`` logits of every exit (training and ``functional_call``)."""
        return unroll(self, x).predictions

    def set_step_costs(self, costs: torch.Tensor) -> None:
        """Store the ``(K,)`` cumulative multiply-adds per sample (see :func:`count_step_macs`)."""
        costs = torch.as_tensor(costs, dtype=torch.float64)
        if costs.shape != (self.max_steps,):
            raise ValueError(f"step costs must have shape ({self.max_steps},); got {costs.shape}")
        self._step_costs = costs

    def step_costs(self) -> torch.Tensor:
        if self._step_costs is None:
            raise RuntimeError(
                "step costs not counted yet: call model.set_step_costs(count_step_macs(model, "
                "example)) first"
            )
        return self._step_costs


def exit_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` cross-entropy of every exit: ``logits (B, K, C)``, integer ``targets (B,)``."""
    if logits.dim() != 3 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (B, K, C) and targets (B,); got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    B, K, C = logits.shape
    flat = F.cross_entropy(logits.reshape(B * K, C), targets.repeat_interleave(K), reduction="none")
    return flat.view(B, K)


@torch.no_grad()
def count_step_macs(model: StepModel, example: torch.Tensor) -> torch.Tensor:
    """``(T,)`` float64 cumulative multiply-adds per sample of stopping after step t.

    ``example`` is one input with its batch dimension (``(1, ...)``); the model runs once, in eval
    mode, step by step, while hooks on every conv and linear layer add up their work.
    """
    if example.shape[0] != 1:
        raise ValueError(f"count on a batch of one; got a batch of {example.shape[0]}")
    was_training = model.training
    model.eval()
    try:
        with counting_macs(model) as per_step:
            state = model.start(example)
            for t in range(model.max_steps):
                per_step.append(0)
                state = model.advance(state, t)
                model.predict(state, t)
    finally:
        model.train(was_training)
    return torch.cumsum(torch.tensor(per_step[1:], dtype=torch.float64), dim=0)


@torch.no_grad()
def count_policy_macs(policy: nn.Module, exits: int, classes: int) -> torch.Tensor:
    """``(K,)`` float64 cumulative multiply-adds per sample of a policy over exit logits
    ``(B, classes)`` asked at exits 1..k (its conv and linear layers; like the softmax of the
    exits, the features it computes from the logits are not counted)."""
    with counting_macs(policy) as per_exit:
        for t in range(exits):
            per_exit.append(0)
            policy(torch.zeros(1, classes), t)
    return torch.cumsum(torch.tensor(per_exit[1:], dtype=torch.float64), dim=0)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm of an eval-mode ``model`` into the convolution before it, in place
    (``torch.nn.utils.fusion.fuse_conv_bn_eval``: BN(W∗x) = (s·W)∗x + (β − s·μ) with
    s = γ/√(σ² + ε) per output channel); the BN becomes an identity. Only valid for inference
    (running statistics); returns ``model``."""
    for block in model.modules():
        if isinstance(block, ConvBNReLU) and isinstance(block[1], BatchNorm):
            block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), nn.Identity()
    return model


@torch.no_grad()
def fold_stem(model: MultiExitCNN) -> MultiExitCNN:
    """Fold the space-to-depth stem (factor f) into block 1's first convolution, in place.

    A 3-wide convolution with padding 1 and stride s on the unshuffled map reads, for each
    output position, the 3f input positions starting f before it: it is a 3f-wide convolution
    with stride f·s and padding f on the raw input, whose weight at (c, f·a + i) is the old
    weight at (channel c·f^d + (i-th offset), a). Same outputs, same multiply-adds (C_in·f^d·3^d
    per output), and no unshuffle copy. Returns ``model`` with ``stem = 1``.
    """
    f, d = model.stem, model.dims
    if f == 1:
        return model
    conv = model.blocks[0][0][0]
    out, C = conv.out_channels, model.in_channels
    # Old weight (out, C·f^d, 3^d) with channel index c·f^d + offset; offsets i (rows) then j.
    w = conv.weight.view(out, C, *[f] * d, *[3] * d)
    if d == 2:  # (o, c, i, j, a, b) -> (o, c, a, i, b, j) -> (o, c, 3f, 3f)
        w = w.permute(0, 1, 4, 2, 5, 3).reshape(out, C, 3 * f, 3 * f)
    else:  # (o, c, i, a) -> (o, c, a, i) -> (o, c, 3f)
        w = w.permute(0, 1, 3, 2).reshape(out, C, 3 * f)
    stride = tuple(f * s for s in conv.stride)
    folded = _conv(d, C, out, 3 * f, stride=stride, padding=f, bias=conv.bias is not None)
    folded = folded.to(conv.weight)
    folded.weight.copy_(w)
    if conv.bias is not None:
        folded.bias.copy_(conv.bias)
    model.blocks[0][0][0] = folded
    model.stem = 1
    return model


def inference_copy(
    model: MultiExitCNN, stem: bool = True, channels_last_from: int | None = 1
) -> MultiExitCNN:
    """An eval-mode copy of ``model`` for fast CPU inference, computing the same function with
    the same multiply-adds (the step costs are kept): BatchNorm folded into the convolutions
    (:func:`fold_batchnorm`), the stem folded into the first one (``stem``, :func:`fold_stem`),
    and the blocks and heads from step ``channels_last_from`` (0-based; None: none) on in
    channels-last memory. oneDNN's wider convolutions run faster on NHWC maps, but the
    16-channel 7×7 ones of the first Fashion-MNIST block and the 4-channel ones of the
    MNIST-1D ``benchmark`` network run slower, so the default keeps step 0 in its own layout
    and converts only the rows that go on (benchmarks/multi_exit_speed.py measures each; the
    MNIST-1D ``quick`` network is faster still from step 0).

    A 1-D network runs channels-last as the 2-D network of height one that computes the same
    function (:func:`signals_as_images`): oneDNN has no channels-last 1-D convolution, and the
    MNIST-1D networks' later blocks ran 1.3–2× slower on NCL maps than on NHWC ones."""
    fast = fold_batchnorm(copy.deepcopy(model).eval())
    if stem:
        fold_stem(fast)
    if channels_last_from is not None:
        if not 0 <= channels_last_from < fast.max_steps:
            raise ValueError(
                f"channels_last_from must lie in 0..{fast.max_steps - 1}; got {channels_last_from}"
            )
        if fast.dims == 1:
            signals_as_images(fast, channels_last_from)
        for t in range(channels_last_from, fast.max_steps):
            fast.blocks[t].to(memory_format=torch.channels_last)
            fast.heads[t].to(memory_format=torch.channels_last)
        fast.channels_last_from = channels_last_from
    return fast


@torch.no_grad()
def fastest_inference_copy(
    model: MultiExitCNN, example: torch.Tensor, stem: bool = True, repeats: int = 5
) -> MultiExitCNN:
    """The :func:`inference_copy` whose ``channels_last_from`` (None or a step) runs the whole
    network fastest on ``example`` on this CPU: medians of ``repeats`` interleaved passes of
    every candidate. Which layout oneDNN runs faster depends on the CPU and on the block (on an
    AVX2-only CPU the first Fashion-MNIST block ran 1.5× faster channels-last; on the machine
    of 2026-12-02 it ran slower), so the switch is measured, not fixed. The copy's
    ``layout_seconds`` maps each candidate to its median (key ``"none"`` for None)."""
    candidates = {s: inference_copy(model, stem, s) for s in (None, *range(model.max_steps))}
    seconds: dict[int | None, list[float]] = {s: [] for s in candidates}
    for net in candidates.values():  # warm-up: oneDNN builds its kernels on the first call
        net(example)
    wait = torch.cuda.synchronize if example.is_cuda else lambda: None  # GPU work is queued
    for _ in range(repeats):
        for s, net in candidates.items():
            wait()
            start = time.perf_counter()
            net(example)
            wait()
            seconds[s].append(time.perf_counter() - start)
    medians = {s: statistics.median(times) for s, times in seconds.items()}
    fast = candidates[min(medians, key=medians.__getitem__)]
    fast.layout_seconds = {"none" if s is None else str(s): m for s, m in medians.items()}
    return fast


def layout_text(channels_last_from: int | None) -> str:
    """Where an inference copy's channels-last steps start, in words (exits count from 1)."""
    if channels_last_from is None:
        return "no channels-last step"
    return f"channels-last from exit {channels_last_from + 1}"


class SignalTapConv(nn.Conv2d):
    """A convolution of one-channel signals held as height-one images, ``(B, 1, 1, L)`` →
    ``(B, out, 1, L')``, computed as one matrix product over its k taps (the same weights and
    multiply-adds, counted as a convolution). oneDNN's convolution is slow with one input
    channel: the folded stem of the MNIST-1D network took 1.5–2.4 ms for 1,000 signals where
    this takes 0.4 (one thread). The product leaves its output channels-last."""

    @classmethod
    @torch.no_grad()
    def of(cls, conv: nn.Conv2d) -> SignalTapConv:
        if conv.in_channels != 1 or conv.kernel_size[0] != 1 or conv.groups != 1:
            raise ValueError(f"SignalTapConv needs a 1×k convolution of one channel: {conv}")
        if conv.stride[0] != 1 or conv.padding[0] != 0 or conv.dilation != (1, 1):
            raise ValueError(f"SignalTapConv needs stride (1, s), padding (0, p): {conv}")
        tap = cls(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                  bias=conv.bias is not None).to(conv.weight)  # fmt: skip
        tap.load_state_dict(conv.state_dict())
        return tap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        (B, _, height, L), k = h.shape, self.kernel_size[1]
        if height != 1:
            raise ValueError(f"SignalTapConv takes (B, 1, 1, L) signals; got {tuple(h.shape)}")
        pad, stride = self.padding[1], self.stride[1]
        taps = F.pad(h.reshape(B, L), (pad, pad)).unfold(1, k, stride).reshape(-1, k)  # (B·L', k)
        weight = self.weight.view(self.out_channels, k).t()
        out = taps @ weight if self.bias is None else torch.addmm(self.bias, taps, weight)
        return out.view(B, 1, -1, self.out_channels).permute(0, 3, 1, 2)  # channels-last


def _as_image_conv(conv: nn.Conv1d) -> nn.Conv2d:
    """The 1×k convolution of height-one images that computes ``conv`` (same weights)."""
    image = nn.Conv2d(conv.in_channels, conv.out_channels, (1, *conv.kernel_size),
                      stride=(1, *conv.stride), padding=(0, *conv.padding),
                      dilation=(1, *conv.dilation), groups=conv.groups,
                      bias=conv.bias is not None).to(conv.weight)  # fmt: skip
    with torch.no_grad():
        image.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            image.bias.copy_(conv.bias)
    return SignalTapConv.of(image) if conv.in_channels == 1 and conv.groups == 1 else image


def signals_as_images(model: MultiExitCNN, from_step: int = 0) -> MultiExitCNN:
    """Run a 1-D ``model`` from step ``from_step`` on as the 2-D network of height one that
    computes the same function, in place: every ``Conv1d`` of those blocks and heads becomes a
    1×k ``Conv2d`` (a one-channel one a :class:`SignalTapConv`), and step ``from_step`` turns
    its ``(B, C, L)`` map into ``(B, C, 1, L)``. Returns ``model``."""
    if model.dims != 1:
        raise ValueError("signals_as_images takes a 1-D network")
    for t in range(from_step, model.max_steps):
        for part in (model.blocks[t], model.heads[t]):
            for module in list(part.modules()):
                for name, child in list(module.named_children()):
                    if isinstance(child, nn.Conv1d):
                        setattr(module, name, _as_image_conv(child))
    model.channels_last_from = from_step
    return model


@register_policy("exit-mlp", lambda: (ExitPolicy(3, hidden=(8,)), torch.randn(6, 10), 3))
class ExitPolicy(nn.Module):
    """L2S stage-II policy for a classifier: exit logits ``(B, C)`` → ``(B,)`` hazard logits, an
    MLP over :func:`~stopwise.policies.classifier_features` (max probability, entropy, margin)
    and a one-hot exit encoding."""

    def __init__(self, exits: int, hidden: tuple[int, ...] = (32,)):
        super().__init__()
        self.mlp = MLPPolicy(3, exits, hidden=hidden)

    def forward(self, logits: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        return self.mlp(classifier_features(logits), t)
