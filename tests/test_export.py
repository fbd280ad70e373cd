"""edgec.export: PyTorch -> ONNX with BatchNorm kept, checked against PyTorch in ONNX Runtime, atomic."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

from edgec.errors import EdgecError
from edgec.export import export, export_factory


def _small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5),
    )
    with torch.no_grad():  # non-identity BN, so folding it or not changes the graph but not the numbers
        for m in net:
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def _ops(path: Path) -> Counter[str]:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


class _WrongSymbolic(torch.autograd.Function):
    """Computes 2x in PyTorch but exports as Relu: the export check must catch this."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def symbolic(g, x):
        return g.op("Relu", x)


class _Doubler(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + 1, _WrongSymbolic.apply(x)


def test_keep_bn_keeps_batchnorm_and_matches_torch(tmp_path: Path) -> None:
    net = _small_net()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kept = export(net, x, tmp_path / "kept.onnx")
    folded = export(net, x, tmp_path / "folded.onnx", keep_bn=False)
    assert _ops(kept)["BatchNormalization"] == 2
    assert _ops(folded)["BatchNormalization"] == 0
    assert onnx.load(str(kept)).opset_import[0].version == 17
    assert net.training  # export restores the caller's mode (and exports the eval-mode model)
    ref = net.eval()(x).detach().numpy()
    for p in (kept, folded):
        np.testing.assert_allclose(_run(p, x.numpy()), ref, rtol=1e-4, atol=1e-5)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["folded.onnx", "kept.onnx"]  # no temp files left


def test_dynamic_batch_runs_other_batch_sizes(tmp_path: Path) -> None:
    net = _small_net().eval()
    p = export(net, np.zeros((1, 3, 16, 16), np.float32), tmp_path / "dyn.onnx", dynamic_batch=True, opset=13)
    dim0 = onnx.load(str(p)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch"
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(p, x), net(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_check_names_the_wrong_output_and_writes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bad.onnx"
    target.write_bytes(b"previous file")
    with pytest.raises(EdgecError) as info:
        export(_Doubler(), torch.ones(1, 4) * -1.0, target, output_names=["plus_one", "doubled"])
    msg = str(info.value)
    assert "'doubled'" in msg and "max rel error" in msg and "\n" not in msg
    assert target.read_bytes() == b"previous file"  # the old file survives a failed export
    assert [f.name for f in tmp_path.iterdir()] == ["bad.onnx"]
    # Without the check the same export goes through: the check is what caught it.
    export(_Doubler(), torch.ones(1, 4) * -1.0, target, check=False)
    assert _ops(target)["Relu"] == 1


def test_export_rejects_non_modules(tmp_path: Path) -> None:
    with pytest.raises(EdgecError, match="torch.nn.Module"):
        export(lambda x: x, torch.ones(1), tmp_path / "x.onnx")


_FACTORY_SRC = '''
import torch

def good():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())

def boom():
    raise ValueError("weights file missing")

def not_a_module():
    return 42
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "edgec_factory_mod.py").write_text(_FACTORY_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "edgec_factory_mod"
    sys.modules.pop("edgec_factory_mod", None)


def test_export_factory_exports_a_checked_model(factory_module: str, tmp_path: Path) -> None:
    out = export_factory(f"{factory_module}:good", [(1, 3, 12, 12)], tmp_path / "good.onnx", opset=13)
    assert _ops(out)["BatchNormalization"] == 1
    assert [d.dim_value for d in onnx.load(str(out)).graph.output[0].type.tensor_type.shape.dim] == [1, 4, 10, 10]


@pytest.mark.parametrize(("spec", "shape", "fragment"), [
    ("no_such_module_for_edgec_tests:f", [(1, 3)], "cannot import module 'no_such_module_for_edgec_tests'"),
    ("{mod}:missing", [(1, 3, 8, 8)], "has no attribute 'missing'"),
    ("{mod}:boom", [(1, 3, 8, 8)], "factory raised ValueError: weights file missing"),
    ("{mod}:not_a_module", [(1, 3, 8, 8)], "returned int, not a torch.nn.Module"),
    ("{mod}:good", [(1, 0, 8, 8)], "bad input shape"),
    ("{mod}:good", [], "no input shape"),
    ("{mod}:good", [(1, 5, 8, 8)], "forward failed for input shape 1x5x8x8"),
    ("{mod}", [(1, 3, 8, 8)], "expected 'package.module:factory'"),
])
def test_export_factory_errors_are_one_line(factory_module: str, tmp_path: Path, spec: str,
                                            shape: list[tuple[int, ...]], fragment: str) -> None:
    spec = spec.format(mod=factory_module)
    with pytest.raises(EdgecError) as info:
        export_factory(spec, shape, tmp_path / "out.onnx")
    msg = info.value.message
    assert fragment in msg and spec in msg and "\n" not in str(info.value)
    assert not (tmp_path / "out.onnx").exists()


def test_missing_torch_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(EdgecError) as info:
        export_factory("x:y", [(1, 3)], tmp_path / "o.onnx")
    assert info.value.message == "edgec export needs PyTorch: pip install 'edgec[torch]'"
