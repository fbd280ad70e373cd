"""PyTorch builders of the test models: the real topologies edgec must handle, at test-friendly sizes.

Every builder is seeded (same weights on every machine with torch 2.13.0) and returns a module in eval
mode. The models are untrained, so BatchNorm would otherwise be the identity (mean 0, var 1, gamma 1,
beta 0) and a broken fuse-bn could pass unnoticed; ``_randomize_bn`` gives every BN layer non-trivial
affine parameters and running statistics measured on the layer's activations (then perturbed), so
activations keep their scale through the depth and the output depends on the input.

    resnet18_style(width)        BasicBlocks with residual Adds, ResNet-18 topology (width=64 is ResNet-18)
    mobilenetv2_style(width_mult) inverted residuals, depthwise convs, ReLU6 (width_mult=1.0 is MobileNetV2)
    yolo_style(width)            CSP (C2f-like) blocks with Split/Concat, SiLU, nearest Resize, split head
    transformer_block(dim)       ViT-like: patch Conv, LayerNormalization, MatMul attention, Softmax, GELU

``TEST_SHAPES`` are the input shapes tests use (fast); ``BENCH_SHAPES`` are what tools/bench.py uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

TEST_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 3, 64, 64),
    "mobilenetv2": (1, 3, 64, 64),
    "yolo": (1, 3, 64, 64),
    "transformer": (1, 3, 64, 64),
}
BENCH_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet18": (1, 3, 224, 224),
    "mobilenetv2": (1, 3, 224, 224),
    "yolo": (1, 3, 320, 320),
    "transformer": (1, 3, 224, 224),
}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    # fork_rng so that building a model does not change the global RNG stream other tests rely on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random non-trivial BN affine, and running statistics that match the layer's real activations.

    Purely random running stats do not normalise anything: in eval mode the activation scale then shrinks
    or grows layer after layer, and after 50 layers the output no longer depends on the input (a constant
    model makes drift and top-1 tests meaningless). So the statistics are measured (data-dependent init:
    train-mode passes over seeded normal images; this is weight initialisation, not calibration) and then
    perturbed, so eval-mode BN is still far from the identity and differs from the batch statistics.
    """
    gen = torch.Generator().manual_seed(seed + 1)

    def u(lo: float, hi: float, n: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            c = m.num_features
            m.weight.copy_(u(0.5, 1.5, c) * torch.where(torch.rand(c, generator=gen) < 0.1, -1.0, 1.0))
            m.bias.copy_(u(-0.2, 0.2, c))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the init passes
        model.train()
        for _ in range(2):
            model(torch.randn(8, 3, 64, 64, generator=gen))
        for m in bns:
            c = m.num_features
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn(c, generator=gen) * m.running_var.sqrt())
            m.running_var.mul_(u(0.8, 1.25, c))
    return model.eval()


def _conv_bn(cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


# ---------------------------------------------------------------- ResNet-18 style
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(inplace=True), *_conv_bn(cout, cout, 3))
        self.short = (nn.Sequential(*_conv_bn(cin, cout, 1, stride))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class ResNet18Style(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, width, 7, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, cout in enumerate([width, 2 * width, 4 * width, 8 * width]):
            blocks += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


def resnet18_style(width: int = 16, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """ResNet-18 topology (4 stages x 2 BasicBlocks, 1x1 downsample shortcuts); width=64, 1000 classes is
    the real ResNet-18 layer for layer."""
    with _seeded(seed):
        return _randomize_bn(ResNet18Style(width, num_classes), seed)


# ---------------------------------------------------------------- MobileNetV2 style
def _divisible(v: float, d: int = 8) -> int:
    # MobileNetV2 rounds channel counts to multiples of 8 and never below 90 % of the request.
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True),
                   *_conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2Style(nn.Module):
    # (expansion t, channels c, repeats n, first stride s) from the MobileNetV2 paper, table 2.
    CONFIG: ClassVar[list[tuple[int, int, int, int]]] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width_mult: float = 0.35, num_classes: int = 10) -> None:
        super().__init__()
        cin = _divisible(32 * width_mult)
        last = _divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [*_conv_bn(3, cin, 3, 2), nn.ReLU6(inplace=True)]
        for t, c, n, s in self.CONFIG:
            cout = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers += [*_conv_bn(cin, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def mobilenetv2_style(width_mult: float = 0.35, num_classes: int = 10, seed: int = 0) -> nn.Module:
    """MobileNetV2 (inverted residuals with depthwise 3x3, ReLU6, linear bottlenecks); width_mult=1.0
    and 1000 classes is the real MobileNetV2."""
    with _seeded(seed):
        return _randomize_bn(MobileNetV2Style(width_mult, num_classes), seed)


# ---------------------------------------------------------------- YOLO style
class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, s: int = 1) -> None:
        super().__init__(*_conv_bn(cin, cout, k, s), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """CSP block as in YOLOv8: 1x1 conv, Split in two, a chain of bottlenecks on one half, Concat all."""

    def __init__(self, cin: int, cout: int, n: int = 1) -> None:
        super().__init__()
        self.c = cout // 2
        self.cv1 = ConvBnSiLU(cin, 2 * self.c)
        self.m = nn.ModuleList(Bottleneck(self.c) for _ in range(n))
        self.cv2 = ConvBnSiLU((2 + n) * self.c, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).split((self.c, self.c), 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class YoloStyle(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        w = width
        self.nc = num_classes
        self.stem = nn.Sequential(ConvBnSiLU(3, w, 3, 2), ConvBnSiLU(w, 2 * w, 3, 2), C2f(2 * w, 2 * w))
        self.p3 = nn.Sequential(ConvBnSiLU(2 * w, 4 * w, 3, 2), C2f(4 * w, 4 * w, 2))     # stride 8
        self.p4 = nn.Sequential(ConvBnSiLU(4 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w, 2))     # stride 16
        self.p5 = nn.Sequential(ConvBnSiLU(8 * w, 8 * w, 3, 2), C2f(8 * w, 8 * w))        # stride 32
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.n4 = C2f(16 * w, 8 * w)
        self.n3 = C2f(12 * w, 4 * w)
        self.heads = nn.ModuleList(
            nn.Sequential(ConvBnSiLU(c, c, 3), nn.Conv2d(c, 4 + 1 + num_classes, 1)) for c in (4 * w, 8 * w))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p5 = self.p5(p4)
        n4 = self.n4(torch.cat([self.up(p5), p4], 1))
        n3 = self.n3(torch.cat([self.up(n4), p3], 1))
        outs = [h(f).flatten(2) for h, f in zip(self.heads, (n3, n4))]
        # The detection head's Split: box regression, objectness, class scores.
        box, obj, cls = torch.cat(outs, 2).split((4, 1, self.nc), 1)
        return box, torch.sigmoid(obj) * torch.sigmoid(cls)


def yolo_style(width: int = 16, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """YOLOv8-like detector: C2f CSP blocks (Split + Concat), SiLU, nearest 2x Resize in the neck, two
    detection scales and a Split head. Outputs (boxes [1,4,N], scores [1,nc,N])."""
    with _seeded(seed):
        return _randomize_bn(YoloStyle(width, num_classes), seed)


# ---------------------------------------------------------------- Transformer block
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, 1.0 / math.sqrt(dim // heads)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        # Written as explicit MatMul + Softmax (not F.scaled_dot_product_attention) so the ONNX graph holds
        # the MatMul/Softmax pattern the quantizer and the TFLite backend must handle.
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class EncoderBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TransformerStyle(nn.Module):
    min_opset = 17  # LayerNormalization exists as one ONNX op from opset 17; below it is decomposed

    def __init__(self, dim: int, heads: int, depth: int, patch: int, image: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


def transformer_block(dim: int = 64, heads: int = 4, depth: int = 1, patch: int = 8, image: int = 64,
                      num_classes: int = 10, seed: int = 0) -> nn.Module:
    """ViT-like classifier: patch-embedding Conv, ``depth`` pre-norm encoder blocks (LayerNormalization,
    MatMul attention with Softmax, GELU MLP), mean pool, Linear. ``image`` must match the input size."""
    with _seeded(seed):
        model = TransformerStyle(dim, heads, depth, patch, image, num_classes)
        with torch.no_grad():  # non-trivial LayerNorm affine, so a fused/rewritten LN is really tested
            for m in model.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
        return model.eval()


BUILDERS = {
    "resnet18": resnet18_style,
    "mobilenetv2": mobilenetv2_style,
    "yolo": yolo_style,
    "transformer": transformer_block,
}


def build(name: str, bench: bool = False) -> tuple[nn.Module, tuple[int, ...]]:
    """The named model and its input shape; ``bench=True`` gives the benchmark-size variant."""
    if bench:
        shape = BENCH_SHAPES[name]
        kwargs = {"resnet18": {"width": 64, "num_classes": 1000},
                  "mobilenetv2": {"width_mult": 1.0, "num_classes": 1000},
                  "yolo": {"width": 32, "num_classes": 80},
                  "transformer": {"dim": 192, "heads": 3, "depth": 4, "patch": 16, "image": 224,
                                  "num_classes": 1000}}[name]
        return BUILDERS[name](**kwargs), shape
    return BUILDERS[name](), TEST_SHAPES[name]


def export_onnx(module: nn.Module, shape: tuple[int, ...], path: str | Path, opset: int = 13,
                keep_bn: bool = True) -> Path:
    """Export with edgec.export (checked against PyTorch in ONNX Runtime). A module declaring
    ``min_opset`` (the transformer: LayerNormalization needs 17) is exported at least at that opset."""
    from edgec.export import export

    opset = max(opset, getattr(module, "min_opset", opset))
    gen = torch.Generator().manual_seed(0)
    # Seeded normal input: it only drives tracing and the export check, never calibration.
    example = torch.randn(*shape, generator=gen)
    return export(module, (example,), path, opset=opset, keep_bn=keep_bn, check=True)
