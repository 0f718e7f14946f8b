"""Loading a model to evaluate: one of our runs, an external IResNet checkpoint, or an ONNX file.

Checkpoints are data, so they are read with ``weights_only=True`` (through
:func:`lrfr_cli.engine.load_checkpoint`); ONNX files are protobuf, parsed and checked by
:mod:`lrfr_cli.models.onnx_import`, which also reads their input contract. A model has a
*backend*: ``torch`` (our module, or the ONNX graph converted to a trainable torch module) or
``onnxruntime`` (the ONNX file itself, or our run exported on the fly).

Everything a user can get wrong (wrong path, wrong ``--backbone``, a head-only file, an ONNX
file that does not say how to prepare its input) becomes one line that says what to do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import load_checkpoint
from ..errors import LrfrError
from ..models import BACKBONES, INPUT_SIZE, build_backbone
from ..registry import check_choice
from ..workspace import fingerprint_file
from . import convert_adaface
from .loaded import LoadedModel

CHECKPOINT_CHOICES = ("auto", "best", "last")
CHANNEL_ORDERS = ("auto", "rgb", "bgr")  # auto: bgr for AdaFace checkpoints, else rgb (face.evoLVe, insightface, ours)
BACKENDS = ("torch", "onnxruntime")
# What --backend auto picks for our runs on the CPU. benchmarks/infer_cpu.py decides: a backend
# becomes the default only if it is correct (cosine >= 0.9999 to torch fp32) and >= 1.2x faster on
# every backbone. Measured (README, Benchmarks): onnxruntime 1.05-1.67x (not everywhere); torch
# bf16 1.8-2.5x on random weights but cosine 0.9996 on the trained MobileFace (not correct).
AUTO_CPU_BACKEND = "torch"
AUTO_HELP = ("onnxruntime for .onnx files (2.4x the converted torch graph), torch fp32 for runs and checkpoints "
             "(onnxruntime was not >= 1.2x faster on every backbone, bf16 not exact enough: see the benchmarks in the README)")


def choose_backend(backend: str, spec: str, device_type: str) -> str:
    """``--backend auto`` resolved: an ONNX file runs in onnxruntime (what it was made for); our
    networks in :data:`AUTO_CPU_BACKEND` on the CPU, torch on a GPU."""
    b = (backend or "auto").strip().lower()
    if b == "auto":
        if Path(spec).suffix.lower() == ".onnx":
            return "onnxruntime"
        return AUTO_CPU_BACKEND if device_type == "cpu" else "torch"
    if b not in BACKENDS:
        raise LrfrError(f"--backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    return b


_PREFIXES = ("module.", "model.", "backbone.", "_orig_mod.")


def _find_run_dir(spec: str, ws_root: Path) -> Path | None:
    cands = [Path(spec).expanduser()]
    if not Path(spec).is_absolute():
        cands += [ws_root / spec, ws_root / "runs" / spec]
    for c in cands:
        if c.is_dir():
            return c
    return None


def resolve_model(
    spec: str,
    ws_root: Path,
    *,
    backbone: str | None = None,
    checkpoint: str = "auto",
    channel_order: str = "auto",
    layout: str | None = None,
    pixel_mean: str | None = None,
    pixel_std: str | None = None,
    backend: str = "torch",
    device: str = "cpu",
    onnx_cache: Path | None = None,
) -> LoadedModel:
    """``runs/RUN`` / ``RUN`` / a run folder (our checkpoints), a ``.pt/.pth`` file (external) or
    a ``.onnx`` file.

    ``layout``, ``pixel_mean``, ``pixel_std`` (and ``channel_order``) describe an ONNX file's
    input where its metadata does not; they are refused for other models, whose input is fixed.
    ``backend="onnxruntime"`` runs an ONNX file as it is, and a run or checkpoint exported to ONNX
    first (cached under ``onnx_cache``, keyed by the checkpoint's sha1)."""
    check_choice(backend, BACKENDS, "--backend")
    check_choice(checkpoint, CHECKPOINT_CHOICES, "--checkpoint")
    check_choice(channel_order, CHANNEL_ORDERS, "--channel-order")
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".onnx":
        if backbone:
            raise LrfrError(f"--backbone {backbone}: an ONNX file carries its own network; drop --backbone")
        from .onnx_model import load_onnx

        return load_onnx(p, channel_order=channel_order, layout=layout, pixel_mean=pixel_mean, pixel_std=pixel_std,
                         backend=backend, device=device)
    given = [o for o, v in (("--layout", layout), ("--pixel-mean", pixel_mean), ("--pixel-std", pixel_std)) if v not in (None, "")]
    if given:
        raise LrfrError(f"{'/'.join(given)}: only for ONNX files (--model x.onnx); lrfr runs and checkpoints take (x/255 - 0.5)/0.5, NCHW")
    if p.is_file():
        loaded = _load_external(p, backbone, channel_order)
    else:
        loaded = _load_run_spec(spec, ws_root, backbone, checkpoint, channel_order)
    if backend == "onnxruntime":
        from .onnx_model import exported_to_ort

        return exported_to_ort(loaded, onnx_cache, device)
    return loaded


def _load_run_spec(spec: str, ws_root: Path, backbone: str | None, checkpoint: str, channel_order: str) -> LoadedModel:
    run_dir = _find_run_dir(spec, ws_root)
    if run_dir is None:
        raise LrfrError(
            f"--model {spec}: not a run folder (looked in {ws_root / 'runs'}) nor a checkpoint file; "
            "pass runs/RUN from `lrfr train` or a .pt/.pth file with --backbone"
        )
    return _load_run(run_dir, backbone, checkpoint, "rgb" if channel_order == "auto" else channel_order)


def _load_run(run_dir: Path, backbone: str | None, which: str, channel_order: str) -> LoadedModel:
    ck_dir = run_dir / "checkpoints"
    if which == "auto":
        path = ck_dir / "best.pt" if (ck_dir / "best.pt").is_file() else ck_dir / "last.pt"
    else:
        path = ck_dir / f"{which}.pt"
    if not path.is_file():
        have = sorted(p.name for p in ck_dir.glob("*.pt")) if ck_dir.is_dir() else []
        raise LrfrError(
            f"run {run_dir} has no checkpoint {path.name} (found: {', '.join(have) or 'none'}); "
            "train it first or pick --checkpoint last|best"
        )
    ckpt = load_checkpoint(path)
    config: dict[str, Any] = {}
    cfg_file = run_dir / "config.json"
    if cfg_file.is_file():
        try:
            config = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise LrfrError(f"{cfg_file}: not valid JSON ({e})") from e
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict):
        config = ckpt["config"]
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise LrfrError(f"{path}: not an lrfr run checkpoint (no 'model' entry)")
    if config.get("kind", "recognition") != "recognition":  # a run knows its kind (SR runs: "sr")
        kind = {"sr": "super-resolution"}.get(str(config["kind"]), str(config["kind"]))
        raise LrfrError(f"runs/{run_dir.name} is a {kind} run, not a face recogniser: evaluate a recognition run "
                        f"and pass this one as --sr runs/{run_dir.name}")
    bb = str(config.get("backbone") or backbone or "")
    if not bb:
        raise LrfrError(f"run {run_dir}: config.json names no backbone; pass --backbone")
    if backbone and backbone.lower() != bb.lower():
        raise LrfrError(f"--backbone {backbone}: run {run_dir.name} was trained with {bb}; drop --backbone")
    emb = int(config.get("embedding_size", 512))
    contract = None
    if bb.lower() == "onnx":  # fine-tuned from an ONNX file: the checkpoint carries the graph
        from ..models.onnx_import import rebuild

        module = rebuild(ckpt["model"], str(path))
        emb, contract = module.embedding_size, module.contract.describe()
    else:
        module = _build_and_load(bb, emb, _clean_state(ckpt["model"], path), path)
    return LoadedModel(
        module=module,
        name=run_dir.name,
        backbone=bb,
        embedding_size=emb,
        checkpoint=path,
        sha1=fingerprint_file(path)["sha1"],
        source="run",
        input_size=int(config.get("input_size", INPUT_SIZE)),
        channel_order=channel_order,
        config=config,
        contract=contract,
    )


def _load_external(path: Path, backbone: str | None, channel_order: str) -> LoadedModel:
    ckpt = load_checkpoint(path)
    state = _clean_state(_extract_state(ckpt, path), path)
    layout = "insightface"
    if convert_adaface.is_adaface_layout(state):
        state, detected, layout = convert_adaface.convert(state)
        if backbone and backbone.lower() != detected:
            raise LrfrError(
                f"checkpoint {path} is a {convert_adaface.LAYOUT_NAMES[layout]} {detected} (by its block count), not {backbone}; "
                f"use --backbone {detected}"
            )
        backbone = detected
    emb = _infer_embedding_size(state)
    if not backbone:
        backbone = _guess_backbone(state, emb, exclude="")
        if backbone is None:
            raise LrfrError(f"--model {path}: no registered backbone fits this state_dict; name it with --backbone ({', '.join(BACKBONES)})")
    if channel_order == "auto":
        channel_order = convert_adaface.CHANNEL_ORDER.get(layout, "rgb")
    module = _build_and_load(backbone, emb, state, path)
    return LoadedModel(
        module=module,
        name=path.stem,
        backbone=backbone.lower(),
        embedding_size=emb,
        checkpoint=path,
        sha1=fingerprint_file(path)["sha1"],
        source="external",
        channel_order=channel_order,
        config={"layout": layout},
    )


def _extract_state(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    """A bare state_dict (insightface, face.evoLVe), ``{"state_dict": ...}`` (AdaFace/Lightning) or ours."""
    if not isinstance(ckpt, dict):
        raise LrfrError(f"{path}: expected a state_dict (a mapping of tensors), got {type(ckpt).__name__}")
    for key in ("state_dict", "model", "backbone"):
        inner = ckpt.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return ckpt


def _clean_state(state: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict):
        raise LrfrError(f"{path}: the model entry is not a state_dict")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise LrfrError(f"{path}: holds no tensors; is it a checkpoint of a model?")
    # Drop training-only parts (margin heads) that checkpoints of whole training modules carry.
    tensors = {k: v for k, v in tensors.items() if not k.startswith(("head.", "module.head.", "model.head."))}
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if tensors and all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
                changed = True
    return tensors


def _infer_embedding_size(state: dict[str, torch.Tensor]) -> int:
    for key in ("features.weight", "features.running_mean", "fc.weight", "bn.running_mean", "linear.weight"):
        t = state.get(key)
        if t is not None:
            return int(t.shape[0])
    return 512


def _mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str]]:
    own = module.state_dict()
    # num_batches_tracked is BN bookkeeping that older exports lack.
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def _guess_backbone(state: dict[str, torch.Tensor], emb: int, exclude: str) -> str | None:
    """Which registered backbone the state_dict fits exactly (built on the meta device: free)."""
    for name in BACKBONES:
        if name == exclude:
            continue
        try:
            with torch.device("meta"):
                cand = build_backbone(name, emb)
        except Exception:  # noqa: BLE001 - a backbone that cannot build on meta is simply not suggested
            continue
        if not any(_mismatch(cand, state)):
            return name
    return None


def _build_and_load(backbone: str, emb: int, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    module = build_backbone(backbone, emb)
    missing, unexpected, shapes = _mismatch(module, state)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            parts.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        guess = _guess_backbone(state, emb, backbone.lower())
        hint = f"; it fits --backbone {guess}" if guess else "; is it a checkpoint of another network?"
        raise LrfrError(f"checkpoint {path} does not match backbone {backbone}: {', '.join(parts)} keys{hint}")
    module.load_state_dict(state, strict=False)
    module.eval()
    return module
