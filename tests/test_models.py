"""Backbones: registry, shapes, insightface-compatible parameter names, preprocessing."""

from __future__ import annotations

import pytest
import torch

from lrfr_cli.errors import LrfrError
from lrfr_cli.models import BACKBONES, build_backbone, preprocess


@pytest.mark.parametrize("name", ["tiny", "mobilefacenet", "sphere20"])
def test_output_shape_and_embedding_size(name):
    m = build_backbone(name, embedding_size=128).eval()
    with torch.no_grad():
        y = m(preprocess(torch.randint(0, 256, (2, 3, 112, 112), dtype=torch.uint8)))
    assert y.shape == (2, 128)
    assert torch.isfinite(y).all()


def test_iresnet_matches_arcface_torch_layout():
    """Public arcface_torch r50 weights: 43.59 M parameters, these names and shapes."""
    m = build_backbone("ir50")
    sd = m.state_dict()
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == 43_590_848
    expect = {
        "conv1.weight": (64, 3, 3, 3),
        "bn1.running_mean": (64,),
        "prelu.weight": (64,),
        "layer1.0.bn1.weight": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer1.0.prelu.weight": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3),
        "layer1.0.bn3.weight": (64,),
        "layer1.0.downsample.0.weight": (64, 64, 1, 1),
        "layer1.0.downsample.1.weight": (64,),
        "layer3.13.conv2.weight": (256, 256, 3, 3),
        "layer4.2.bn3.bias": (512,),
        "bn2.weight": (512,),
        "fc.weight": (512, 512 * 7 * 7),
        "features.weight": (512,),
        "features.running_var": (512,),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert "layer3.14.conv1.weight" not in sd  # 3-4-14-3 blocks
    assert not m.features.weight.requires_grad
    # Depths of the other variants.
    sd100 = build_backbone("ir100").state_dict()
    assert "layer3.29.conv1.weight" in sd100 and "layer3.30.conv1.weight" not in sd100
    sd18 = build_backbone("ir18").state_dict()
    assert "layer4.1.conv1.weight" in sd18 and "layer4.2.conv1.weight" not in sd18


def test_ir18_forward_and_state_dict_round_trip():
    a = build_backbone("ir18").eval()
    b = build_backbone("ir18").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        assert a(x).shape == (2, 512)


def test_preprocess_is_insightface_convention():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    y = preprocess(x).view(-1)
    torch.testing.assert_close(y, torch.tensor([-1.0, (127 / 255 - 0.5) / 0.5, 1.0]))
    assert preprocess(torch.ones(1, 3, 1, 1)).flatten().tolist() == [1.0, 1.0, 1.0]  # floats are in [0, 1]


def test_unknown_backbone_lists_choices():
    with pytest.raises(LrfrError) as e:
        build_backbone("resnet9000")
    for name in BACKBONES:
        assert name in str(e.value)
    assert set(BACKBONES) >= {"ir18", "ir50", "ir100", "sphere20", "mobilefacenet"}
