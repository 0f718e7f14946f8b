"""The onnxruntime backend of the embedding pass: an ONNX graph behind the same call as a torch net.

:class:`OrtNet` is an ``nn.Module`` only so that the embedding pass can treat it like any
backbone (``.to(device)`` is a no-op, it has no parameters). The pass hands it the uint8 faces
(``takes_uint8``), so the graph's input is made from the pixels exactly as its
:class:`~lrfr_cli.models.onnx_import.InputContract` says, with no round trip through lrfr's
[-1, 1] tensor. onnxruntime runs on the CPU unless a CUDA device is asked for and its CUDA
provider is installed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.onnx_import import InputContract, ort_session


class OrtNet(nn.Module):
    """An onnxruntime session with lrfr's forward signature (see the module docstring)."""

    takes_uint8 = True

    def __init__(self, data: bytes, contract: InputContract, device: str = "cpu", threads: int = 0) -> None:
        super().__init__()
        self.contract = contract
        self.session = ort_session(data, device, threads)
        self.providers = list(self.session.get_providers())

    def __deepcopy__(self, memo: dict[int, Any]) -> OrtNet:  # a session cannot be copied; it is stateless
        return self

    def run_faces(self, faces: np.ndarray) -> np.ndarray:
        """uint8 N×H×W×3 RGB → raw float32 N×D embeddings."""
        x = self.contract.numpy_input(faces)
        out = self.session.run([self.contract.output_name], {self.contract.input_name: x})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(faces), -1)

    def embed_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 B×3×H×W RGB (any device) → raw float32 embeddings on that device."""
        faces = x.permute(0, 2, 3, 1).cpu().numpy()
        return torch.from_numpy(self.run_faces(faces)).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """lrfr's standard input ((p/255 − 0.5)/0.5, N×3×H×W) → raw embeddings (pixels recovered
        in float, not rounded: the path :func:`embed_uint8` avoids)."""
        pixels = (x.detach().float() * 127.5 + 127.5).permute(0, 2, 3, 1).cpu().numpy()
        c = self.contract
        p = pixels[..., ::-1] if c.channel_order == "bgr" else pixels
        p = (p - np.asarray(c.mean, np.float32)) / np.asarray(c.std, np.float32)
        if c.layout == "nchw":
            p = p.transpose(0, 3, 1, 2)
        out = self.session.run([c.output_name], {c.input_name: np.ascontiguousarray(p, dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(p), -1)).to(x.device)
