"""AdaFace (and TFace/face.evoLVe) IR checkpoints → our insightface-layout IResNet.

The two layouts are the same network with other parameter names:

=================================  ==========================================
AdaFace ``net.py``                 insightface ``iresnet`` (ours)
=================================  ==========================================
input_layer.{0,1,2}                conv1, bn1, prelu
body.N.res_layer.{0..5}            layerS.B.{bn1, conv1, bn2, prelu, conv2, bn3}
body.N.shortcut_layer.{0,1}        layerS.B.downsample.{0,1}
output_layer.{0,3,4}               bn2, fc, features (BatchNorm1d without affine)
=================================  ==========================================

One real difference: AdaFace's first block of stage 1 keeps 64 channels and its shortcut is
``MaxPool2d(1, 2)``, a parameter-free sub-sampling, where insightface uses a 1×1 stride-2 conv +
BN. We express the sub-sampling exactly with an identity 1×1 conv and an identity BN
(running_var = 1 − eps, so the BN divides by exactly 1). AdaFace models also expect BGR input.
"""

from __future__ import annotations

import torch

from ..errors import LrfrError

_DEPTHS = {8: ("ir18", (2, 2, 2, 2)), 24: ("ir50", (3, 4, 14, 3)), 49: ("ir100", (3, 13, 30, 3))}
_RES = {"0": "bn1", "1": "conv1", "2": "bn2", "3": "prelu", "4": "conv2", "5": "bn3"}
_IN = {"0": "conv1", "1": "bn1", "2": "prelu"}
_OUT = {"0": "bn2", "3": "fc", "4": "features"}
BN_EPS = 1e-5


def is_adaface_layout(state: dict[str, torch.Tensor]) -> bool:
    return "input_layer.0.weight" in state and any(k.startswith("body.") for k in state)


def convert(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Renamed state_dict and the backbone name it fits (ir18/ir50/ir100)."""
    if any("se_module" in k for k in state):
        raise LrfrError("this is an IR-SE checkpoint (squeeze-and-excitation blocks); only plain IR backbones are supported")
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    if len(blocks) not in _DEPTHS:
        raise LrfrError(f"AdaFace-layout checkpoint with {len(blocks)} residual blocks: supported are IR-18/50/100 (8/24/49 blocks)")
    name, depths = _DEPTHS[len(blocks)]
    where: list[tuple[int, int]] = [(s, b) for s, d in enumerate(depths, 1) for b in range(d)]
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "input_layer" and parts[1] in _IN:
            out[".".join([_IN[parts[1]]] + parts[2:])] = v
        elif parts[0] == "output_layer" and parts[1] in _OUT:
            out[".".join([_OUT[parts[1]]] + parts[2:])] = v
        elif parts[0] == "body":
            s, b = where[int(parts[1])]
            if parts[2] == "res_layer" and parts[3] in _RES:
                out[".".join([f"layer{s}", str(b), _RES[parts[3]]] + parts[4:])] = v
            elif parts[2] == "shortcut_layer":
                out[".".join([f"layer{s}", str(b), "downsample", parts[3]] + parts[4:])] = v
            else:
                raise LrfrError(f"unexpected parameter {k} in an AdaFace-layout checkpoint")
        else:
            raise LrfrError(f"unexpected parameter {k} in an AdaFace-layout checkpoint")
    # Stage 1's first shortcut: MaxPool2d(1, 2) == identity 1x1 conv (stride 2) + identity BN.
    if "layer1.0.downsample.0.weight" not in out:
        c = out["conv1.weight"].shape[0]
        ref = out["conv1.weight"]
        out["layer1.0.downsample.0.weight"] = torch.eye(c, dtype=ref.dtype).view(c, c, 1, 1)
        out["layer1.0.downsample.1.weight"] = torch.ones(c, dtype=ref.dtype)
        out["layer1.0.downsample.1.bias"] = torch.zeros(c, dtype=ref.dtype)
        out["layer1.0.downsample.1.running_mean"] = torch.zeros(c, dtype=ref.dtype)
        out["layer1.0.downsample.1.running_var"] = torch.full((c,), 1.0 - BN_EPS, dtype=ref.dtype)
        out["layer1.0.downsample.1.num_batches_tracked"] = torch.tensor(0)
    # BatchNorm1d(affine=False) → our affine BN with scale 1 and shift 0.
    if "features.weight" not in out and "features.running_mean" in out:
        e = out["features.running_mean"]
        out["features.weight"] = torch.ones_like(e)
        out["features.bias"] = torch.zeros_like(e)
    return out, name
