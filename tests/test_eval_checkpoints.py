"""External checkpoints: an AdaFace-layout IR network, written here independently, must give the
same embeddings as our IResNet after the checkpoint conversion."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from lrfr_cli.embed import convert_adaface, extract
from lrfr_cli.embed.model import resolve_model
from lrfr_cli.errors import LrfrError
from lrfr_cli.models import build_backbone


class _Block(nn.Module):
    """AdaFace's BasicBlockIR: BN-conv-BN-PReLU-conv(stride)-BN, MaxPool(1, s) or conv+BN shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer = (
            nn.MaxPool2d(1, stride) if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        blocks, cin = [], 64
        for cout in (64, 128, 256, 512):
            blocks += [_Block(cin, cout, 2), _Block(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*blocks)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(0.4), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512, affine=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(x)))


def _randomise(m: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for name, t in m.state_dict().items():
        if t.dtype.is_floating_point:
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("weight") and t.ndim > 1:
                t.copy_(torch.randn(t.shape, generator=g) * (1.0 / t[0].numel()) ** 0.5)
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))


def test_adaface_checkpoint_gives_the_same_embeddings(tmp_path: Path) -> None:
    ada = AdaFaceIR18().eval()
    _randomise(ada)
    f = tmp_path / "adaface_ir18.ckpt"
    sd = {f"model.{k}": v for k, v in ada.state_dict().items()}
    sd["head.kernel"] = torch.randn(512, 7)
    torch.save({"state_dict": sd, "hyper_parameters": {"arch": "ir_18"}}, f)
    m = resolve_model(str(f), tmp_path)  # backbone and channel order detected
    assert m.backbone == "ir18" and m.channel_order == "bgr" and m.config["layout"] == "adaface"
    x = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    with torch.inference_mode():
        want = ada(((x.flip(1).float() / 255.0) - 0.5) / 0.5)  # AdaFace: BGR, [-1, 1]
    got = extract.forward(m, x, "fp32")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(LrfrError, match="AdaFace ir18.*--backbone ir18"):
        resolve_model(str(f), tmp_path, backbone="ir50")


def test_insightface_state_dict_backbone_is_detected(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = build_backbone("ir18")
    f = tmp_path / "backbone.pth"
    torch.save(ref.state_dict(), f)
    m = resolve_model(str(f), tmp_path)
    assert m.backbone == "ir18" and m.channel_order == "rgb"
    g = tmp_path / "junk.pth"
    torch.save({"a.weight": torch.zeros(3)}, g)
    with pytest.raises(LrfrError, match="--backbone"):
        resolve_model(str(g), tmp_path)


# ----------------------------------------------------------------------------- face.evoLVe
_EVOLVE_IR50 = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, out, units) per stage


def _bn(sd: dict[str, torch.Tensor], prefix: str, c: int, g: torch.Generator, scale: float = 1.0) -> None:
    sd[f"{prefix}.weight"] = scale * (1.0 + 0.1 * torch.randn(c, generator=g))
    sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)


def _conv(cout: int, cin: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5


@functools.cache
def _evolve_ir50_state() -> tuple[dict[str, torch.Tensor], list[tuple[int, int, int]]]:
    """face.evoLVe ``IR_50([112, 112])`` parameter names and shapes, random values."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {"input_layer.0.weight": _conv(64, 3, 3, g)}
    _bn(sd, "input_layer.1", 64, g)
    sd["input_layer.2.weight"] = 0.25 + 0.05 * torch.randn(64, generator=g)
    units = [(cin if u == 0 else cout, cout, 2 if u == 0 else 1) for cin, cout, n in _EVOLVE_IR50 for u in range(n)]
    for i, (cin, cout, _) in enumerate(units):
        p = f"body.{i}"
        if cin != cout:
            sd[f"{p}.shortcut_layer.0.weight"] = _conv(cout, cin, 1, g)
            _bn(sd, f"{p}.shortcut_layer.1", cout, g)
        _bn(sd, f"{p}.res_layer.0", cin, g)
        sd[f"{p}.res_layer.1.weight"] = _conv(cout, cin, 3, g)
        sd[f"{p}.res_layer.2.weight"] = 0.25 + 0.05 * torch.randn(cout, generator=g)
        sd[f"{p}.res_layer.3.weight"] = _conv(cout, cout, 3, g)
        _bn(sd, f"{p}.res_layer.4", cout, g, scale=0.2)  # keeps 24 residual sums in range
    _bn(sd, "output_layer.0", 512, g)
    sd["output_layer.3.weight"] = torch.randn(512, 512 * 49, generator=g) / (512 * 49) ** 0.5
    sd["output_layer.3.bias"] = 0.1 * torch.randn(512, generator=g)
    for k in ("weight", "bias", "running_mean", "running_var"):  # affine BatchNorm1d
        sd[f"output_layer.4.{k}"] = (0.5 + torch.rand(512, generator=g)) if k in ("weight", "running_var") else 0.1 * torch.randn(512, generator=g)
    sd["output_layer.4.num_batches_tracked"] = torch.tensor(100)
    return sd, units


def _evolve_reference(sd: dict[str, torch.Tensor], units: list[tuple[int, int, int]], x: torch.Tensor) -> torch.Tensor:
    """face.evoLVe's Backbone.forward written with functional ops on the raw state dict."""
    import torch.nn.functional as F

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5)

    t = F.prelu(bn(F.conv2d(x, sd["input_layer.0.weight"], padding=1), "input_layer.1"), sd["input_layer.2.weight"])
    for i, (cin, cout, stride) in enumerate(units):
        p = f"body.{i}"
        if cin == cout:
            short = t[:, :, ::stride, ::stride]  # MaxPool2d(1, stride): plain sub-sampling
        else:
            short = bn(F.conv2d(t, sd[f"{p}.shortcut_layer.0.weight"], stride=stride), f"{p}.shortcut_layer.1")
        r = F.conv2d(bn(t, f"{p}.res_layer.0"), sd[f"{p}.res_layer.1.weight"], padding=1)
        r = F.conv2d(F.prelu(r, sd[f"{p}.res_layer.2.weight"]), sd[f"{p}.res_layer.3.weight"], stride=stride, padding=1)
        t = bn(r, f"{p}.res_layer.4") + short
    t = bn(t, "output_layer.0").flatten(1)
    return bn(F.linear(t, sd["output_layer.3.weight"], sd["output_layer.3.bias"]), "output_layer.4")


def test_evolve_ir50_checkpoint_gives_the_same_embeddings(tmp_path: Path) -> None:
    sd, units = _evolve_ir50_state()
    f = tmp_path / "backbone_ir50_ms1m_epoch120.pth"
    torch.save(sd, f)  # face.evoLVe saves the bare backbone state_dict
    m = resolve_model(str(f), tmp_path)
    assert m.backbone == "ir50" and m.channel_order == "rgb" and m.config["layout"] == "evolve"
    x = torch.randint(0, 256, (1, 3, 112, 112), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))  # IR-50 on CPU: one face
    with torch.inference_mode():
        want = _evolve_reference(sd, units, (x.float() / 255.0 - 0.5) / 0.5)  # RGB, mean 0.5, std 0.5
    got = extract.forward(m, x, "fp32")
    assert want.std() > 0.1  # not a degenerate comparison
    # fp32 through 50 conv layers, summed in another order: tolerance relative to the output scale.
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    with pytest.raises(LrfrError, match=r"face\.evoLVe ir50.*--backbone ir50"):
        resolve_model(str(f), tmp_path, backbone="ir18")


def test_evolve_variants_we_cannot_load_say_so() -> None:
    sd, _ = _evolve_ir50_state()
    with pytest.raises(LrfrError, match="IR-SE"):  # IR_SE_50: an SEModule closes every residual branch
        convert_adaface.convert(dict(sd, **{"body.0.res_layer.5.fc1.weight": torch.zeros(4, 64, 1, 1)}))
    with pytest.raises(LrfrError, match="112x112-input"):  # Backbone([224, 224], ...)
        convert_adaface.convert(dict(sd, **{"output_layer.3.weight": torch.zeros(1).expand(512, 512 * 14 * 14)}))
    with pytest.raises(LrfrError, match=r"face\.evoLVe-layout checkpoint with 23 residual blocks"):
        convert_adaface.convert({k: v for k, v in sd.items() if not k.startswith("body.23.")})
    with pytest.raises(LrfrError, match="neither AdaFace's 6-module"):
        convert_adaface.convert({k: v for k, v in sd.items() if ".res_layer.4." not in k})
