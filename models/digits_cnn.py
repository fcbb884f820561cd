"""The embedded default: a small residual CNN for scikit-learn's 8x8 digits.

It has what the pipeline must handle on real models (BatchNorm to fold, a residual Add, a
strided convolution, global pooling, a Linear head) and trains in seconds on two CPU cores.
The committed checkpoint ``weights/digits_cnn.pt`` comes from :func:`train` with seed 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.block_conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.block_bn1 = nn.BatchNorm2d(16)
        self.block_conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.block_bn2 = nn.BatchNorm2d(16)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(32)
        self.conv = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.conv_bn = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.block_bn1(self.block_conv1(x)))
        y = self.block_bn2(self.block_conv2(y))
        x = F.relu(x + y)
        x = F.relu(self.down_bn(self.down(x)))
        x = F.relu(self.conv_bn(self.conv(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@dataclass
class TrainResult:
    model: DigitsCNN
    test_accuracy: float
    seconds: float


def train(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
          seed: int = 0, epochs: int = 40, batch_size: int = 64, lr: float = 3e-3) -> TrainResult:
    """Train from scratch, reproducibly: same seed and data give the same weights on one machine."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    model = DigitsCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = x_train[idx]
            # One-pixel random shifts: the digits are tiny, this is the augmentation that matters.
            dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    return TrainResult(model, acc, time.perf_counter() - start)
