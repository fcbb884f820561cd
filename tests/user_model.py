"""A user's own model for the export tests: depthwise convolution, residual add, Linear layers.

Loaded as ``tests/user_model.py:make_model``. The token Linear runs on a rank-3 tensor, so
torch exports it as a MatMul with a transposed, renamed weight (not a Gemm): the exporter
must find that layer by value.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class UserNet(nn.Module):
    input_shape = (3, 8, 8)

    def __init__(self, width: int = 8, tokens: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.depthwise = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False)
        self.depthwise_bn = nn.BatchNorm2d(width)
        self.pointwise = nn.Conv2d(width, width, 1, bias=False)
        self.pointwise_bn = nn.BatchNorm2d(width)
        self.token_mix = nn.Linear(width, tokens)
        self.head = nn.Linear(tokens, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.depthwise_bn(self.depthwise(x)))
        x = F.relu(x + self.pointwise_bn(self.pointwise(y)))
        t = x.flatten(2).transpose(1, 2)          # N, H*W, C
        t = F.relu(self.token_mix(t))             # Linear on rank 3: MatMul + Add
        return self.head(t.mean(1))               # Linear on rank 2: Gemm


def make_model() -> UserNet:
    """Seeded weights and BatchNorm statistics that are not the identity."""
    torch.manual_seed(0)
    model = UserNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()
