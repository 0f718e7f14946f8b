"""ONNX models as :class:`~lrfr_cli.embed.loaded.LoadedModel`: a user's file (either backend) and
our runs exported on the fly for the onnxruntime backend."""

from __future__ import annotations

from pathlib import Path

from ..errors import LrfrError
from ..models.onnx_export import INPUT_NAME, OUTPUT_NAME, metadata, to_onnx_bytes, with_metadata
from ..models.onnx_import import InputContract, load_proto, read_contract, sha256_file, to_torch
from ..workspace import atomic_write_bytes, fingerprint_file
from .loaded import LoadedModel


def load_onnx(path: Path, *, channel_order: str = "auto", layout: str | None = None, pixel_mean: str | None = None,
              pixel_std: str | None = None, backend: str = "torch", device: str = "cpu") -> LoadedModel:
    """An ONNX file: checked, its contract read (metadata, then options), then either converted
    to a trainable torch module or opened in onnxruntime."""
    model = load_proto(path)
    data = path.read_bytes()
    contract = read_contract(model, str(path), layout=layout, channel_order=channel_order, mean=pixel_mean, std=pixel_std, data=data)
    if backend == "onnxruntime":
        from .ort import OrtNet

        module = OrtNet(data, contract, device)
    else:
        module = to_torch(model, contract)
    sha256 = sha256_file(path)
    return LoadedModel(
        module=module,
        name=path.stem,
        backbone="onnx",
        embedding_size=contract.embedding_size,
        checkpoint=path.resolve(),
        sha1=fingerprint_file(path)["sha1"],
        source="onnx",
        input_size=contract.size,
        channel_order="rgb",  # the module takes lrfr's RGB tensor; the contract makes the file's order
        config={"onnx": {"path": str(path.resolve()), "sha256": sha256}},
        contract=contract.describe(),
        backend=backend,
        sha256=sha256,
    )


def standard_contract(loaded: LoadedModel, layout: str = "nchw") -> InputContract:
    """The contract of lrfr's own export of ``loaded`` ((x − 127.5)/127.5, its channel order)."""
    return InputContract(layout=layout, channel_order=loaded.channel_order, mean=(127.5,) * 3, std=(127.5,) * 3,
                         size=loaded.input_size, embedding_size=loaded.embedding_size, input_name=INPUT_NAME,
                         output_name=OUTPUT_NAME, sources={"all": "lrfr export"})


def exported_to_ort(loaded: LoadedModel, cache: Path | None, device: str = "cpu") -> LoadedModel:
    """``loaded`` (a run or checkpoint) exported to ONNX, run by onnxruntime; the export is kept
    at ``cache/<cache_id>.onnx`` so the next eval reuses it (an unreadable cached file is redone)."""
    from .ort import OrtNet

    if loaded.source == "onnx":
        raise LrfrError("internal: an ONNX file needs no export")
    contract = standard_contract(loaded)
    target = cache / f"{loaded.cache_id}.onnx" if cache is not None else None
    data = target.read_bytes() if target is not None and target.is_file() else None
    module = None
    if data is not None:
        try:
            module = OrtNet(data, contract, device)
        except LrfrError:
            data = None
    if data is None:
        data = with_metadata(to_onnx_bytes(loaded), {**metadata(loaded), "parity": "not checked (exported for eval --backend onnxruntime)"})
        if target is not None:
            atomic_write_bytes(target, data)
        module = OrtNet(data, contract, device)
    loaded.module = module
    loaded.backend = "onnxruntime"
    loaded.config = {**loaded.config, "onnx_export": str(target) if target is not None else "in memory"}
    return loaded
