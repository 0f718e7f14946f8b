"""Checkpoint converter (not the AdaFace loss, that is :mod:`lrfr_cli.losses.adaface`): AdaFace /
TFace and face.evoLVe IR checkpoints → our insightface-layout IResNet.

Both use the same module names (``input_layer``, ``body.N.{res_layer,shortcut_layer}``,
``output_layer``), for the same network as insightface's ``iresnet`` under other parameter names:

=================================  ==========================================
AdaFace ``net.py`` (6-module res)  insightface ``iresnet`` (ours)
=================================  ==========================================
input_layer.{0,1,2}                conv1, bn1, prelu
body.N.res_layer.{0..5}            layerS.B.{bn1, conv1, bn2, prelu, conv2, bn3}
body.N.shortcut_layer.{0,1}        layerS.B.downsample.{0,1}
output_layer.{0,3,4}               bn2, fc, features (BatchNorm1d without affine)
=================================  ==========================================

face.evoLVe's ``backbone/model_irse.py`` (``IR_50``, ``IR_101``) has a 5-module residual
branch, BN → conv → PReLU → conv(stride) → BN, with no BN between the first conv and the PReLU:
``res_layer.{0..4}`` → ``{bn1, conv1, prelu, conv2, bn3}``, and our ``bn2`` becomes an identity BN.
Its final BatchNorm1d is affine. It was trained on RGB input normalised with mean 0.5 and std
0.5 (``config.py``'s ``RGB_MEAN``/``RGB_STD``, ``extract_feature_v1.py``), i.e. exactly our
:func:`lrfr_cli.models.preprocess`. Its IR-152 and 224×224-input variants have no counterpart here.

One real difference: the first block of stage 1 keeps 64 channels and its shortcut is
``MaxPool2d(1, 2)``, a parameter-free sub-sampling, where insightface uses a 1×1 stride-2 conv +
BN. We express the sub-sampling exactly with an identity 1×1 conv and an identity BN
(running_var = 1 − eps, so the BN divides by exactly 1). AdaFace models expect BGR input,
face.evoLVe models RGB.
"""

from __future__ import annotations

import torch

from ..errors import LrfrError

_DEPTHS = {8: ("ir18", (2, 2, 2, 2)), 24: ("ir50", (3, 4, 14, 3)), 49: ("ir100", (3, 13, 30, 3))}
_RES = {"0": "bn1", "1": "conv1", "2": "bn2", "3": "prelu", "4": "conv2", "5": "bn3"}  # AdaFace
_RES_EVOLVE = {"0": "bn1", "1": "conv1", "2": "prelu", "3": "conv2", "4": "bn3"}  # face.evoLVe
_IN = {"0": "conv1", "1": "bn1", "2": "prelu"}
_OUT = {"0": "bn2", "3": "fc", "4": "features"}
BN_EPS = 1e-5
LAYOUT_NAMES = {"adaface": "AdaFace", "evolve": "face.evoLVe"}
CHANNEL_ORDER = {"adaface": "bgr", "evolve": "rgb"}


def is_adaface_layout(state: dict[str, torch.Tensor]) -> bool:
    """AdaFace or face.evoLVe naming (``input_layer`` + ``body``); :func:`convert` tells which."""
    return "input_layer.0.weight" in state and any(k.startswith("body.") for k in state)


def _layout(state: dict[str, torch.Tensor]) -> str:
    """``adaface`` (6-module residual branch) or ``evolve`` (5 modules), from the parameter names."""
    res = {k.split(".")[3] for k in state if k.startswith("body.") and k.split(".")[2:3] == ["res_layer"]}
    # A module nested inside the residual branch (body.N.res_layer.M.fc1.weight) is a squeeze-and-excitation unit.
    if any("se_module" in k for k in state) or any(k.startswith("body.") and k.count(".") > 4 for k in state):
        raise LrfrError("this is an IR-SE checkpoint (squeeze-and-excitation blocks); only plain IR backbones are supported")
    if "5" in res:
        return "adaface"
    # face.evoLVe: module 2 of the branch is a PReLU (weight only), module 4 the closing BN.
    if res == set(_RES_EVOLVE) and not any(k.endswith("res_layer.2.running_mean") for k in state):
        return "evolve"
    raise LrfrError(
        f"residual blocks with modules res_layer.{{{','.join(sorted(res))}}}: neither AdaFace's 6-module "
        "(BN, conv, BN, PReLU, conv, BN) nor face.evoLVe's 5-module (BN, conv, PReLU, conv, BN) IR block"
    )


def _identity_bn(c: int, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """A BatchNorm2d that passes its input through unchanged (scale 1, shift 0, var + eps = 1)."""
    return {
        "weight": torch.ones(c, dtype=ref.dtype),
        "bias": torch.zeros(c, dtype=ref.dtype),
        "running_mean": torch.zeros(c, dtype=ref.dtype),
        "running_var": torch.full((c,), 1.0 - BN_EPS, dtype=ref.dtype),
        "num_batches_tracked": torch.tensor(0),
    }


def convert(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str, str]:
    """Renamed state_dict, the backbone name it fits (ir18/ir50/ir100) and the layout (``adaface``/``evolve``)."""
    layout = _layout(state)
    name_of = LAYOUT_NAMES[layout]
    res_map = _RES if layout == "adaface" else _RES_EVOLVE
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("body.")})
    if len(blocks) not in _DEPTHS:
        raise LrfrError(
            f"{name_of}-layout checkpoint with {len(blocks)} residual blocks: supported are IR-18/50/100 (8/24/49 blocks)"
        )
    fc = state.get("output_layer.3.weight")
    if fc is not None and fc.ndim == 2 and fc.shape[1] != 512 * 7 * 7:
        raise LrfrError(
            f"{name_of}-layout checkpoint whose last linear layer takes {fc.shape[1]} inputs: only 112x112-input "
            f"models (512x7x7 = {512 * 7 * 7}) are supported"
        )
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
            if parts[2] == "res_layer" and parts[3] in res_map:
                out[".".join([f"layer{s}", str(b), res_map[parts[3]]] + parts[4:])] = v
            elif parts[2] == "shortcut_layer":
                out[".".join([f"layer{s}", str(b), "downsample", parts[3]] + parts[4:])] = v
            else:
                raise LrfrError(f"unexpected parameter {k} in a {name_of}-layout checkpoint")
        else:
            raise LrfrError(f"unexpected parameter {k} in a {name_of}-layout checkpoint")
    ref = out["conv1.weight"]
    if layout == "evolve":
        # No BN between the branch's first conv and its PReLU: our bn2 passes through.
        for s, b in where:
            c = out[f"layer{s}.{b}.conv1.weight"].shape[0]
            out.update({f"layer{s}.{b}.bn2.{p}": t for p, t in _identity_bn(c, ref).items()})
    # Stage 1's first shortcut: MaxPool2d(1, 2) == identity 1x1 conv (stride 2) + identity BN.
    if "layer1.0.downsample.0.weight" not in out:
        c = ref.shape[0]
        out["layer1.0.downsample.0.weight"] = torch.eye(c, dtype=ref.dtype).view(c, c, 1, 1)
        out.update({f"layer1.0.downsample.1.{p}": t for p, t in _identity_bn(c, ref).items()})
    # BatchNorm1d(affine=False) → our affine BN with scale 1 and shift 0.
    if "features.weight" not in out and "features.running_mean" in out:
        e = out["features.running_mean"]
        out["features.weight"] = torch.ones_like(e)
        out["features.bias"] = torch.zeros_like(e)
    return out, name, layout
