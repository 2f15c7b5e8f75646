"""MAC counting against closed forms worked out by hand."""

import torch
from torch import nn

from stopwise.macs import count_macs, counting_macs


def test_count_macs_of_convolutions_and_linear_layers_by_hand():
    # Conv2d 3→8, 3×3, padding 1 on (2, 3, 5, 5): 2·8·5·5 outputs × 3·9 = 10,800.
    # Depthwise Conv2d 8→8, groups 8, 3×3, no padding: 2·8·3·3 outputs × 1·9 = 1,296.
    # Linear 72→4 on (2, 72): 2·4 outputs × 72 = 576. ReLU and Flatten: 0.
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8),
        nn.Flatten(),
        nn.Linear(72, 4),
    )
    assert count_macs(model, torch.zeros(2, 3, 5, 5)) == 10_800 + 1_296 + 576
    # Conv1d 1→4, kernel 5, stride 2 on (3, 1, 11): 3·4·4 outputs × 5 = 240.
    assert count_macs(nn.Conv1d(1, 4, 5, stride=2), torch.zeros(3, 1, 11)) == 240


def test_counting_macs_counts_parts_apart_and_removes_its_hooks():
    layer = nn.Linear(5, 3)
    with counting_macs(layer) as counts:
        layer(torch.zeros(1, 5))  # 15
        counts.append(0)
        layer(torch.zeros(4, 5))  # 60
        layer(torch.zeros(1, 2, 5))  # 2 rows of 3 outputs: 30
    assert counts == [15, 90]
    assert not layer._forward_hooks
    with counting_macs(layer) as again:
        pass
    assert again == [0]


def test_transposed_convolutions_count_the_adjoints_work():
    # ConvTranspose2d 4→6, 3×3, stride 2 on (1, 4, 5, 5): every one of the 4·25 input elements
    # scatters into 6·9 outputs: 5,400 — the MACs of its adjoint Conv2d(6, 4, 3, stride=2).
    up = nn.ConvTranspose2d(4, 6, 3, stride=2)
    assert count_macs(up, torch.zeros(1, 4, 5, 5)) == 5_400
    down = nn.Conv2d(6, 4, 3, stride=2)
    assert count_macs(down, torch.zeros(1, 6, 11, 11)) == 5_400


def test_grouped_transposed_convolutions_of_a_batch_count_each_groups_outputs_once():
    # Groups 2 on a batch of 3: each input element scatters into the 6/2 output channels of its
    # group, 3·9 outputs: 3·4·25·27 = 8,100; the adjoint grouped Conv2d does the same work.
    up = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2)
    assert count_macs(up, torch.zeros(3, 4, 5, 5)) == 3 * 4 * 25 * 3 * 9
    down = nn.Conv2d(6, 4, 3, stride=2, groups=2)
    assert count_macs(down, torch.zeros(3, 6, 11, 11)) == 8_100
