"""The PyTorch peer for bench/train_step.py: the same AlexNet, step and optimiser.

Only the benchmark imports this (torch is in requirements-bench.txt, never a
project dependency). The network matches alexnet_jax.model.network.AlexNet with
`within_channel_norm=False` (PyTorch has no such layer): conv1 padded to 55x55
outputs as the 2012 code, LRN1 on conv1's output before ReLU, LRN within each
tower (`nn.LocalResponseNorm(5, 1e-4, 0.75, 2)` is the as-trained alpha / n
form), grouped conv2/conv4/conv5, overlapping 3x3/2 max-pooling, dropout 0.5
(PyTorch's inverted form; alexnet_jax's default scales at test instead, at the same cost).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _scaled(features: int, width: float, towers: int) -> int:
    return max(towers, round(features * width / towers) * towers)


class TowerLRN(nn.Module):
    """LRN applied to each tower's channels on their own, as in the paper."""

    def __init__(self, towers: int):
        super().__init__()
        self.towers = towers
        self.lrn = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.lrn(t) for t in x.chunk(self.towers, dim=1)], dim=1)


class AlexNetTorch(nn.Module):
    def __init__(self, num_classes: int, input_size: int, width: float = 1.0, towers: int = 2):
        super().__init__()
        c = [_scaled(f, width, towers) for f in (96, 256, 384, 384, 256)]
        hidden = _scaled(4096, width, towers)
        # conv1 output side as the 2012 code: 1 + ceil((size - 11) / 4); pad the far edge.
        out = 1 + -(-(input_size - 11) // 4)
        self.conv1_pad = (out - 1) * 4 + 11 - input_size
        self.conv1 = nn.Conv2d(3, c[0], 11, stride=4)
        self.conv2 = nn.Conv2d(c[0], c[1], 5, padding=2, groups=towers)
        self.conv3 = nn.Conv2d(c[1], c[2], 3, padding=1)
        self.conv4 = nn.Conv2d(c[2], c[3], 3, padding=1, groups=towers)
        self.conv5 = nn.Conv2d(c[3], c[4], 3, padding=1, groups=towers)
        self.lrn = TowerLRN(towers)
        side = out
        for _ in range(3):
            side = (side - 3) // 2 + 1
        self.fc6 = nn.Linear(side * side * c[4], hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        for layer, std in [
            (self.conv1, 0.01),
            (self.conv2, 0.01),
            (self.conv3, 0.03),
            (self.conv4, 0.03),
            (self.conv5, 0.03),
            (self.fc6, 0.01),
            (self.fc7, 0.01),
            (self.fc8, 0.01),
        ]:
            nn.init.normal_(layer.weight, 0.0, std)
            nn.init.zeros_(layer.bias)
        for layer in (self.conv2, self.conv4, self.conv5, self.fc6, self.fc7):
            nn.init.ones_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.pad(x, (0, self.conv1_pad, 0, self.conv1_pad)))
        x = F.relu(F.max_pool2d(self.lrn(x), 3, 2))
        x = F.max_pool2d(self.lrn(F.relu(self.conv2(x))), 3, 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
        x = F.dropout(F.relu(self.fc6(x.flatten(1))), 0.5, self.training)
        x = F.dropout(F.relu(self.fc7(x)), 0.5, self.training)
        return self.fc8(x)


def make_step(
    model: AlexNetTorch,
    crop: int,
    mean_rgb: tuple[float, float, float],
    dtype: torch.dtype,
    compiled: bool = False,
):
    """A train step on a uint8 NHWC batch on the model's device: random crop +
    flip per image (one gather), mean subtraction, forward and backward
    (`dtype` bfloat16: under autocast, float32 weights), SGD (momentum 0.9,
    weight decay 5e-4 on weights, biases at 2x the rate without decay).

    `compiled`: what a PyTorch user tunes for speed: the model and its inputs
    in channels_last memory format, the model under `torch.compile`
    (inductor: forward and backward) and the optimiser step compiled too, as
    PyTorch's own tutorials do. The first calls compile.

    torch.optim.SGD keeps the learning rate outside the momentum buffer; that
    changes the numbers only at a learning-rate drop and costs the same time.
    """
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    optimizer = torch.optim.SGD(
        [{"params": weights, "weight_decay": 5e-4}, {"params": biases, "lr": 0.02, "weight_decay": 0.0}],
        lr=0.01,
        momentum=0.9,
    )
    device = next(model.parameters()).device
    memory_format = torch.channels_last if compiled else torch.contiguous_format
    if compiled:
        model = model.to(memory_format=memory_format)
        forward = torch.compile(model)
        update = torch.compile(optimizer.step)
    else:
        forward, update = model, optimizer.step
    mean = torch.tensor(mean_rgb, device=device).view(1, 3, 1, 1)
    offsets = torch.arange(crop, device=device)

    def step(images_bhwc: torch.Tensor, labels: torch.Tensor) -> float:
        batch, size = images_bhwc.shape[0], images_bhwc.shape[1]
        ys = torch.randint(0, size - crop + 1, (batch, 1), device=device)
        xs = torch.randint(0, size - crop + 1, (batch, 1), device=device)
        flips = torch.rand(batch, 1, device=device) < 0.5
        rows = ys + offsets
        cols = torch.where(flips, xs + crop - 1 - offsets, xs + offsets)
        index = torch.arange(batch, device=device)[:, None, None]
        crops = images_bhwc[index, rows[:, :, None], cols[:, None, :]]  # (batch, crop, crop, 3)
        inputs = (crops.permute(0, 3, 1, 2).float() - mean).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(forward(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        update()
        return float(loss)  # waits for the device, like block_until_ready

    return step
