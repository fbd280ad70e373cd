"""Train the bundled example model: a small CNN with BatchNorm on scikit-learn's digits.

Writes ``compiler/assets/digits.onnx`` and ``compiler/assets/digits_samples.npz``.

Data: ``sklearn.datasets.load_digits`` (1797 real 8x8 grayscale handwritten digits, values 0..16).
Split: ``train_test_split(test_size=0.2, stratify=labels, random_state=0)`` -> 1437 train, 360 test.
Scaling: pixel / 16 (so inputs lie in [0, 1]); input "input" of shape [1, 1, 8, 8] float32.
Model: Conv-BN-ReLU(16) -> [Conv-BN-ReLU(16) -> Conv-BN(16)] + residual Add -> ReLU
       -> Conv-BN-ReLU(32, stride 2) -> GlobalAveragePool -> Flatten -> Gemm(10).
Training: Adam lr 3e-3, batch 32, 40 epochs, seeded and deterministic (torch.use_deterministic_algorithms,
one thread) -> about 14 s on a 2-core CPU.
Accuracy reached on the 360 held-out images: 100.0 % (360/360) in PyTorch and in ONNX Runtime
(printed on every run; the script fails below 95 %).

Export keeps BatchNormalization as separate nodes (legacy exporter, do_constant_folding=False,
TrainingMode.EVAL) so that the fuse-bn pass has something real to fold; the script asserts that.

    python tools/make_example.py            # rewrites both asset files
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "compiler" / "assets"
SEED = 0
EPOCHS = 40


def _model():  # torch is imported lazily so `--help`-style imports of this file stay cheap
    from torch import nn

    class DigitsNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
            self.branch = nn.Sequential(
                nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
            )
            self.relu = nn.ReLU()
            # A conv with bias followed by BN: the fuse-bn pass must merge the existing bias too.
            self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = self.stem(x)
            x = self.relu(x + self.branch(x))
            x = self.pool(self.down(x)).flatten(1)
            return self.fc(x)

    return DigitsNet()


def main() -> int:
    import onnx
    import onnxruntime as ort
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # reductions split across threads can change the last bits between machines

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None]  # N,1,8,8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=SEED)

    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(SEED)
    t0 = time.perf_counter()
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(xt), generator=gen).split(32):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    train_s = time.perf_counter() - t0

    model.eval()
    with torch.no_grad():
        acc_torch = float((model(torch.from_numpy(x_te)).argmax(1).numpy() == y_te).mean())

    ASSETS.mkdir(parents=True, exist_ok=True)
    onnx_path = ASSETS / "digits.onnx"
    tmp = onnx_path.with_suffix(".onnx.tmp")
    torch.onnx.export(
        model, (torch.zeros(1, 1, 8, 8),), str(tmp), input_names=["input"], output_names=["logits"],
        opset_version=13, dynamo=False, do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
    )
    proto = onnx.load(str(tmp))
    n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
    if n_bn != 4:
        raise SystemExit(f"expected 4 BatchNormalization nodes in the export, found {n_bn}")
    os.replace(tmp, onnx_path)

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    pred = np.array([sess.run(None, {"input": s[None]})[0].argmax() for s in x_te])
    acc_ort = float((pred == y_te).mean())
    np.savez_compressed(ASSETS / "digits_samples.npz", input=x_te[:, None].astype(np.float32), labels=y_te)

    print(f"train {len(x_tr)} / test {len(x_te)}; trained {EPOCHS} epochs in {train_s:.1f} s")
    print(f"test accuracy: torch {acc_torch:.4f}, onnxruntime {acc_ort:.4f}; {n_bn} BatchNormalization nodes")
    print(f"{onnx_path.stat().st_size} B onnx, {(ASSETS / 'digits_samples.npz').stat().st_size} B npz")
    if acc_ort < 0.95:
        raise SystemExit(f"accuracy {acc_ort:.4f} < 0.95")
    return 0


if __name__ == "__main__":
    sys.exit(main())
