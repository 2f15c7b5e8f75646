"""DnCNN as a step model, its exit heads, the small CNN stopping policy, and their costs.

DnCNN (Zhang et al. 2017; the L2S code's ``models.py``) with L convolution layers of C channels
and 3×3 kernels, no biases, residual: it predicts the noise, and the estimate is
``noisy − predicted noise``::

    module 0:        Conv(1→C) + ReLU
    modules 1..L−2:  Conv(C→C) + BN + ReLU
    final head:      Conv(C→1)

As a :class:`~stopwise.steps.StepModel` there are T = L − 1 steps: step t runs module t, and
exit t predicts the noise from module t's features with head t. The last head is the DnCNN's
own final convolution, so the full-depth model is exactly DnCNN. The plain DnCNN has only that
head; :meth:`DnCNN.add_exit_heads` adds one after each earlier module (the official
``DnCNN_DS`` has 18 of them after modules 1..18 of its 20 layers, and no exit at layer 19,
which is what this layout gives for L = 20). Head kinds:

* ``"conv"`` — the official ``DnCNN_DS`` head, Conv(C→C) + BN + ReLU + Conv(C→1), which costs as
  much as a whole layer;
* ``"linear"`` — Conv(C→1) alone, the same kind as DnCNN's final layer (1/C of a layer).

The policy sees ``[noisy, predicted noise_t, noisy − predicted noise_t]`` (the official
``MulticlassNet`` input) and is shared over exits.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ...policies import register_policy
from ...steps import StepModel

__all__ = [
    "HEAD_KINDS",
    "DnCNN",
    "TapConv2d",
    "inference_copy",
    "ImagePolicy",
    "noise_losses",
    "conv_macs",
]

HEAD_KINDS = ("linear", "conv")


def conv_macs(in_channels: int, out_channels: int, kernel: int = 3, downsample: int = 1) -> float:
    """Multiply-adds per pixel of the network input for a ``kernel × kernel`` convolution whose
    output has ``1 / downsample`` of the input's resolution in each direction."""
    return kernel * kernel * in_channels * out_channels / (downsample * downsample)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


def _head(kind: str, width: int) -> nn.Module:
    if kind == "linear":
        return _conv(width, 1)
    if kind == "conv":
        return nn.Sequential(
            _conv(width, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True), _conv(width, 1)
        )
    raise ValueError(f"unknown exit head {kind!r}; choose one of {HEAD_KINDS}")


class DnCNN(StepModel):
    """DnCNN of ``depth`` layers and ``width`` channels as a step model (see the module doc).

    State: ``{"noisy": (B, 1, H, W), "h": (B, C, H, W)}``. ``predict(state, t)`` is the noise
    predicted at exit t, ``(B, 1, H, W)`` float32; ``features`` is ``(B, 3, H, W)``.
    ``precision="bfloat16"`` runs the convolutions under CPU/GPU autocast; ``channels_last``
    stores feature maps in NHWC order. Exits without a head raise on ``predict``.
    """

    def __init__(
        self,
        depth: int,
        width: int,
        precision: str = "float32",
        channels_last: bool = False,
    ):
        super().__init__()
        if depth < 3:
            raise ValueError(f"depth must be >= 3; got {depth}")
        self.depth, self.width, self.max_steps = depth, width, depth - 1
        self.precision, self.channels_last = precision, channels_last
        modules: list[nn.Module] = [nn.Sequential(_conv(1, width), nn.ReLU(inplace=True))]
        for _ in range(depth - 2):
            modules.append(
                nn.Sequential(_conv(width, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            )
        self.trunk = nn.ModuleList(modules)
        self.heads = nn.ModuleDict({str(depth - 2): _conv(width, 1)})
        self.head_kind = "none"
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
        self._layout()

    # ------------------------------------------------------------ structure

    def add_exit_heads(self, kind: str) -> DnCNN:
        """Add a head of ``kind`` after every module but the last (which has the final conv).

        A linear head starts as a copy of the final convolution (a warm start: each exit first
        reads its features as the full network would); a conv head's last convolution does too.
        """
        final = self.heads[str(self.max_steps - 1)]
        for t in range(self.max_steps - 1):
            head = _head(kind, self.width).to(final.weight.device)
            last = head if kind == "linear" else head[-1]
            with torch.no_grad():
                last.weight.copy_(final.weight)
            self.heads[str(t)] = head
        self.head_kind = kind
        self._layout()
        return self

    def _layout(self) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def has_exit(self, t: int) -> bool:
        return str(t) in self.heads

    def _autocast(self, x: torch.Tensor):
        if self.precision == "bfloat16":
            return torch.autocast(x.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------ the step-model contract

    def start(self, noisy: torch.Tensor):
        if self.channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        return {"noisy": noisy, "h": noisy}

    def advance(self, state, t: int):
        with self._autocast(state["h"]):
            h = self.trunk[t](state["h"])
        return {"noisy": state["noisy"], "h": h}

    def predict(self, state, t: int) -> torch.Tensor:
        key = str(t)
        if key not in self.heads:
            raise ValueError(f"exit {t} has no head (this DnCNN has heads at {sorted(self.heads)})")
        with self._autocast(state["h"]):
            noise = self.heads[key](state["h"])
        return noise.float()

    def features(self, state, t: int) -> torch.Tensor:
        return self.observe(state, t)[1]

    def observe(self, state, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.predict(state, t)
        noisy = state["noisy"]
        return noise, torch.cat([noisy, noise, noisy - noise], dim=1)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        """The full-depth noise prediction ``(B, 1, H, W)``."""
        state = self.start(noisy)
        for t in range(self.max_steps):
            state = self.advance(state, t)
        return self.predict(state, self.max_steps - 1)

    # ------------------------------------------------------------ costs (multiply-adds per pixel)

    def module_macs(self) -> torch.Tensor:
        """``(T,)`` multiply-adds per pixel of each module."""
        first = conv_macs(1, self.width)
        rest = [conv_macs(self.width, self.width)] * (self.max_steps - 1)
        return torch.tensor([first, *rest], dtype=torch.float64)

    def head_macs(self, t: int, kind: str | None = None) -> float:
        """Multiply-adds per pixel of exit t's head (the last is DnCNN's final conv)."""
        kind = self.head_kind if kind is None else kind
        if t == self.max_steps - 1 or kind == "linear":
            return conv_macs(self.width, 1)
        return conv_macs(self.width, self.width) + conv_macs(self.width, 1)

    def fixed_depth_macs(self) -> torch.Tensor:
        """``(T,)`` per-pixel cost of the model truncated at exit t: modules 0..t and head t."""
        heads = torch.tensor([self.head_macs(t) for t in range(self.max_steps)])
        return self.module_macs().cumsum(0) + heads

    def adaptive_macs(self, valid: torch.Tensor, policy_macs: float) -> torch.Tensor:
        """``(T,)`` per-pixel cost of stopping at exit t when the policy runs at every valid
        exit before the last valid one: modules 0..t, the heads of the valid exits ≤ t, and one
        policy call per valid exit < t (the call that decided to stop at t included)."""
        return self.module_macs().cumsum(0) + self.exit_macs(valid, policy_macs).cumsum(0)

    def exit_macs(self, valid: torch.Tensor, policy_macs: float) -> torch.Tensor:
        """``(T,)`` per-pixel cost of visiting each exit beyond its layer: its head if valid and,
        before the last valid exit, the policy call (what a floored rule skips before its
        floor)."""
        valid = valid.bool().cpu()
        last = int(valid.nonzero().max())
        return torch.tensor(
            [
                (self.head_macs(t) if valid[t] else 0.0)
                + (policy_macs if valid[t] and t < last else 0.0)
                for t in range(self.max_steps)
            ],
            dtype=torch.float64,
        )

    def step_costs(self) -> torch.Tensor:
        return self.fixed_depth_macs()


class TapConv2d(nn.Module):
    """A stride-1 k×k convolution with padding k // 2 computed as one matrix product over its k²
    taps and k² shifted sums: the same function and multiply-adds as the ``conv`` it is made
    from (up to rounding; the sums are at least float32, so a bfloat16 map gives float32).

    For one output channel oneDNN's convolution is slow on CPU: DnCNN's final Conv(32→1) costs
    half of a Conv(32→32) on 24 crops of 128² (bfloat16, channels-last), for 1/32 of its
    multiply-adds; this form runs it 3.5× faster (docs/denoising.md, "Inference copy"). The
    matrix product reads the feature map in place in either memory layout.
    """

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        k = conv.kernel_size[0]
        same = conv.kernel_size == (k, k) and k % 2 == 1 and conv.padding == (k // 2, k // 2)
        if not same or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError(f"TapConv2d needs a stride-1, same-padded square convolution: {conv}")
        self.kernel, self.out_channels = k, conv.out_channels
        # (out·k², in): row (o, i, j) is the weight of tap (i, j) of output channel o
        weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(-1, conv.in_channels)
        self.register_buffer("taps", weight.contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        N, _, H, W = h.shape
        k, pad = self.kernel, self.kernel // 2
        # (out·k², C) @ (N, C, H·W): tap (i, j) of every pixel (autocast picks the precision)
        taps = torch.matmul(self.taps, h.flatten(2))
        taps = taps.to(torch.promote_types(taps.dtype, torch.float32)).view(N, -1, k, k, H, W)
        out = taps.new_zeros(N, self.out_channels, H + 2 * pad, W + 2 * pad)
        for i in range(k):
            for j in range(k):
                # out[y, x] += tap (i, j) of pixel (y + i − pad, x + j − pad)
                out[..., k - 1 - i : k - 1 - i + H, k - 1 - j : k - 1 - j + W] += taps[:, :, i, j]
        out = out[..., pad : pad + H, pad : pad + W]
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


@torch.no_grad()
def inference_copy(model: DnCNN) -> DnCNN:
    """An eval-mode copy of ``model`` for fast CPU inference, computing the same function with
    the same multiply-adds (its cost methods are the model's): every BatchNorm folded into the
    convolution before it (``torch.nn.utils.fusion.fuse_conv_bn_eval``), and the one-channel
    convolution that ends each head run as a :class:`TapConv2d`."""
    fast = copy.deepcopy(model).eval()
    blocks = [*fast.trunk, *(h for h in fast.heads.values() if isinstance(h, nn.Sequential))]
    for block in blocks:
        for i in range(len(block) - 1):
            if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                block[i], block[i + 1] = fuse_conv_bn_eval(block[i], block[i + 1]), nn.Identity()
    for key, head in fast.heads.items():
        if isinstance(head, nn.Conv2d):
            fast.heads[key] = TapConv2d(head)
        else:
            head[-1] = TapConv2d(head[-1])
    fast._layout()
    return fast


def noise_losses(predicted: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` per-patch summed squared error ℓ_t = Σ_pixels (n̂_t − n)² of predicted noise
    ``(B, T, 1, H, W)`` against the true noise ``(B, 1, H, W)`` (the official per-patch loss;
    equal to the squared error of the estimate noisy − n̂_t against the clean image)."""
    return ((predicted - noise.unsqueeze(1)) ** 2).flatten(2).sum(-1)


def _policy_example():
    return ImagePolicy(width=8, max_steps=4), torch.randn(5, 3, 16, 16), 4


@register_policy("denoising-cnn", _policy_example)
class ImagePolicy(nn.Module):
    """The stop policy: a small CNN shared over exits, on ``(B, 3, H, W)`` features
    ``[noisy, n̂_t, noisy − n̂_t]`` → ``(B,)`` hazard logits.

    Three 3×3 convolutions of ``width`` channels, each of stride 2 with ReLU, global average
    pooling and a linear layer (the official ``MulticlassNet``: Conv+BN+ReLU+MaxPool twice,
    Conv, global pooling, Linear, 64 channels; here the stride-2 convolutions and a smaller
    width keep its cost under a tenth of a DnCNN layer, and BN is left out). With
    ``step_bias`` a learned bias per exit is added to the logit (the official DnCNN policy has
    no step input; the official LISTA policy has a position encoding).
    """

    def __init__(self, width: int, max_steps: int, step_bias: bool = True):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(width, 1),
        )
        self.step_bias = nn.Parameter(torch.zeros(max_steps)) if step_bias else None

    def forward(self, features: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        logits = self.net(features.float()).squeeze(-1)
        if self.step_bias is not None:
            logits = logits + self.step_bias[t]
        return logits

    def macs(self) -> float:
        """Multiply-adds per input pixel (the three convolutions; pooling and the linear layer
        are per image)."""
        w = self.width
        return (
            conv_macs(3, w, downsample=2)
            + conv_macs(w, w, downsample=4)
            + conv_macs(w, w, downsample=8)
        )
