"""External checkpoints: an AdaFace-layout IR network, written here independently, must give the
same embeddings as our IResNet after the checkpoint conversion."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from lrfr_cli.embed import extract
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
