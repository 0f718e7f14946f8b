"""``lrfr make-list``: training list from an identity-folder tree."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..data.images import parse_exts, walk_files
from ..data.lists import VAL_MODES, build_list, format_list, labels_json, read_names
from ..workspace import atomic_write_text, fingerprint_file, fingerprint_tree
from . import _options as opt
from ._artifact_job import ArtifactJob
from ._common import handle_errors, resolve_input, state, workspace


@handle_errors
def make_list(
    root: Path = typer.Argument(..., help="Identity-folder tree: ROOT/<identity>/<image>. A workspace artifact such as aligned/NAME also works."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="List name; written to <workspace>/lists/NAME/ (default: ROOT's folder name)."),
    min_images: int = typer.Option(1, "--min-images", min=1, help="Leave out identities with fewer images than this."),
    exclude: Optional[Path] = typer.Option(None, "--exclude", help="File of identity names to leave out (one per line; first token; LFW people files work), e.g. to keep test identities out of training."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", min=0.0, max=0.99, help="Fraction held out for validation (see --val-mode); 0 = no val.txt."),
    val_mode: str = typer.Option("images", "--val-mode", help=f"images: hold out that fraction of each identity's images (closed set); identities: hold out whole identities (open set). One of {', '.join(VAL_MODES)}."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation split (same seed, same split)."),
    ext: opt.Ext = None,
    force: bool = typer.Option(False, "--force", help="Redo even if an identical list exists; replace a list made with other options."),
) -> None:
    """Write 'rel/path label' lines (labels 0..N-1 in sorted identity order) and a label map."""
    st = state()
    ws = workspace()
    root = resolve_input(root, ws.root)
    name = out or root.name
    exts = parse_exts(ext)
    excluded_names = read_names(exclude) if exclude else set()
    ws.ensure_writable()
    art = ws.artifact("lists", name)
    options = {
        "min_images": min_images,
        "exclude": sorted(excluded_names),
        "val_fraction": val_fraction,
        "val_mode": val_mode,
        "seed": seed,
        "ext": list(exts),
    }
    # The walker's files (symlinked identity folders included), sorted as fingerprint_tree sorts
    # its own walk, so a tree without links keeps the fingerprint it had.
    files = walk_files(root)
    inputs = {"root": fingerprint_tree(root, sorted(files))}
    if exclude:
        inputs["exclude_file"] = fingerprint_file(exclude)
    job = ArtifactJob("make-list", force=force, name=name, path=str(art.path))
    with job.claim(art, options, inputs, up_to_date=lambda c: f"lists/{name}: {c.get('images')} images, {c.get('identities')} identities") as run:
        if run.skipped:
            return
        res = build_list(root, min_images=min_images, exclude=excluded_names, val_fraction=val_fraction, val_mode=val_mode, seed=seed, exts=exts, files=files)
        atomic_write_text(art.path / "train.txt", format_list(res.train))
        if res.val:
            atomic_write_text(art.path / "val.txt", format_list(res.val))
        atomic_write_text(art.path / "labels.json", labels_json(res))
        unmatched = sorted(excluded_names - set(res.excluded))
        counts = {
            "images": len(res.train),
            "identities": len(res.classes),
            "val_images": len(res.val),
            "val_identities": len(res.val_classes),
            "excluded_identities": len(res.excluded),
            "too_few_images": len(res.too_few),
            "skipped_files": res.skipped_files,
            "exclude_names_not_found": len(unmatched),
        }
        run.record(**counts)
    if res.skipped_files:
        st.warn(f"skipped {res.skipped_files} non-image file(s)")
    val_txt = f", val {len(res.val)} images" if res.val else ""
    job.done(
        f"[green]listed[/green] {len(res.train)} images of {len(res.classes)} identities{val_txt} → {art.path}/train.txt"
        f" ({len(res.excluded)} excluded, {len(res.too_few)} below --min-images)",
        counts,
    )


def register(app: typer.Typer) -> None:
    app.command("make-list")(make_list)
