"""`lrfr train --task sr`: a short SRCNN run beats bicubic on held-out faces, resume continues it
exactly, SRResNet with the SRGAN losses runs on the seam, and bad input is one line.

The margin: after 300 steps (batch 8, 48-px patches, AdamW 1e-3 constant) SRCNN measured +0.3 dB over
bicubic at 16 px on 32 held-out faces of 40 CelebA identities; the test asks for +0.15 dB,
recomputed here with the numpy PSNR reference of tests/test_sr_metrics.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_sr_metrics import ref_psnr

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.images import load_rgb
from lrfr_cli.engine.seed import step_seed
from lrfr_cli.engine.tasks import StepContext
from lrfr_cli.models import build_backbone
from lrfr_cli.models.sr import SRCNN, Discriminator, SRResNet
from lrfr_cli.sr.infer import load_sr_run, super_resolve
from lrfr_cli.sr.task import SRTask, lr_inputs


@pytest.fixture(scope="module")
def faces(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 CelebA identities (symlinked) as an identity tree."""
    src = data_dir / "celeba_subset" / "images"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    root = tmp_path_factory.mktemp("faces") / "faces"
    root.mkdir()
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:40]:
        (root / d.name).symlink_to(d)
    return root


def _list(cli, ws: Path, faces: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli(ws, "make-list", faces, "--out", "faces", "--val-fraction", "0.1", "--min-images", "2", "--quiet")
    assert r.exit_code == 0, r.stdout + r.stderr


def _train(cli, ws: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli(ws, "train", "--task", "sr", "--data", "lists/faces", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0",
               "--workers", "0", "--threads", "1", "--device", "cpu", "--json", *extra)


@pytest.mark.slow
def test_short_srcnn_run_beats_bicubic_on_held_out_faces(cli, ws, faces) -> None:
    _list(cli, ws, faces)
    r = _train(cli, ws, "--arch", "srcnn", "--lr-sizes", "16", "--max-steps", "300", "--batch-size", "8", "--schedule", "constant",
               "--sr-val-images", "32", "--run", "srcnn")
    assert r.exit_code == 0, r.stdout + r.stderr
    d = r.json()
    assert d["task"] == "sr" and d["steps"] == 300 and d["best_val_psnr"] is not None
    cfg = json.loads((ws / "runs" / "srcnn" / "config.json").read_text())
    assert cfg["kind"] == "sr" and cfg["arch"] == "srcnn" and cfg["lr_sizes"] == [16] and cfg["val_images"] == 32
    # independent check on the held-out faces: numpy PSNR of SR vs bicubic, same 32 faces
    val = [ln.rsplit(maxsplit=1)[0] for ln in (ws / "lists" / "faces" / "val.txt").read_text().splitlines() if ln.strip()]
    pick = np.unique(np.linspace(0, len(val) - 1, 32).round().astype(int))
    hr = [load_rgb(faces / val[i]) for i in pick]
    lr = [degrade_array(f, DegradeSpec(16)) for f in hr]
    net = load_sr_run("srcnn", ws).module
    sr = super_resolve(net, torch.from_numpy(np.stack(lr)).permute(0, 3, 1, 2).contiguous()).permute(0, 2, 3, 1).numpy()
    p_bic = np.mean([ref_psnr(a, b) for a, b in zip(lr, hr)])
    p_sr = np.mean([ref_psnr(a, b) for a, b in zip(sr, hr)])
    assert p_sr - p_bic >= 0.15, (p_sr, p_bic)
    # the run's own validation measured the same faces the same way
    assert d["best_val_psnr"] == pytest.approx(p_sr, abs=1e-6)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resumed_sr_run_ends_where_an_uninterrupted_one_does(cli, ws, faces) -> None:
    _list(cli, ws, faces)
    common = ("--arch", "srcnn", "--lr-sizes", "8,16", "--batch-size", "8", "--sr-val-images", "4", "--schedule", "constant", "--sr-patch", "32")
    whole = _train(cli, ws, *common, "--max-steps", "12", "--run", "whole")
    assert whole.exit_code == 0, whole.stdout + whole.stderr
    first = _train(cli, ws, *common, "--max-steps", "6", "--run", "part")
    assert first.exit_code == 0
    rest = _train(cli, ws, *common, "--max-steps", "12", "--run", "part", "--resume", "--force")
    assert rest.exit_code == 0, rest.stdout + rest.stderr
    assert rest.json()["resumed_from"] == 6 and rest.json()["steps"] == 12
    init = SRCNN().state_dict()  # both started from the same seed-0 initialisation
    a, b = _weights(ws / "runs" / "whole" / "checkpoints" / "last.pt"), _weights(ws / "runs" / "part" / "checkpoints" / "last.pt")
    for k in a:
        delta = (a[k] - init[k]).norm()
        # same kernels, same batches, same LR windows: equal up to fp32 rounding of the update
        assert (a[k] - b[k]).norm() <= 1e-4 * delta + 1e-6, k
    assert any((a[k] - init[k]).norm() > 0 for k in a)


def test_srgan_losses_update_each_player_only_by_its_own_term() -> None:
    """One backward of the combined loss gives D exactly the gradient of its own BCE, and the
    generator exactly the gradient of content + w·adversarial (+ perceptual): the detach tricks hold."""
    torch.manual_seed(0)
    hr = (torch.rand(2, 3, 112, 112) * 255).to(torch.uint8)
    rec = build_backbone("tiny", 32).eval()
    task = SRTask(SRResNet(blocks=1, channels=8), [16], perceptual=rec, perceptual_weight=0.5, discriminator=Discriminator((8, 8, 8, 8)),
                  adversarial_weight=0.01, patch=0)
    torch.nn.init.normal_(task.net.out.weight, std=0.01)
    ctx = StepContext(step=0, epoch=0, seed=0, device=torch.device("cpu"))
    out = task({"images": hr, "labels": torch.zeros(2, dtype=torch.long)}, ctx)
    assert set(out.terms) == {"content", "bicubic_content", "perceptual", "adv_g", "adv_d"}
    out.loss.backward()
    g_disc = [p.grad.clone() for p in task.disc.parameters()]
    g_net = [p.grad.clone() for p in task.net.parameters()]
    assert all(p.grad is None for p in rec.parameters())  # frozen recogniser: never a gradient
    assert set(task.checkpoint_modules()) == {"model", "disc"}

    # reference: the two players' losses written out separately
    task.zero_grad(set_to_none=True)
    x = lr_inputs(hr, [16], step_seed(0, 0, 0)).float() / 255
    y = hr.float() / 255
    sr = task.net(x)
    fake, real = task.disc(sr.detach()), task.disc(y)
    d_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    want_disc = torch.autograd.grad(d_loss, list(task.disc.parameters()))
    e_hr = F.normalize(rec((y - 0.5) / 0.5), dim=1).detach()
    e_sr = F.normalize(rec((sr - 0.5) / 0.5), dim=1)
    g_loss = (sr - y).abs().mean() + 0.5 * (1 - (e_sr * e_hr).sum(1)).mean() \
        + 0.01 * F.binary_cross_entropy_with_logits(task.disc(sr), torch.ones(2))
    want_net = torch.autograd.grad(g_loss, list(task.net.parameters()))
    for got, want in zip(g_disc, want_disc):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    for got, want in zip(g_net, want_net):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_srresnet_with_srgan_losses_trains_on_the_seam(cli, ws, faces) -> None:
    _list(cli, ws, faces)
    rec = ws / "runs" / "rec"
    (rec / "checkpoints").mkdir(parents=True)
    cfg = {"backbone": "tiny", "embedding_size": 512, "input_size": 112}
    torch.save({"model": build_backbone("tiny").state_dict(), "config": cfg}, rec / "checkpoints" / "last.pt")
    (rec / "config.json").write_text(json.dumps(cfg))
    r = _train(cli, ws, "--arch", "srresnet", "--perceptual", "runs/rec", "--adversarial", "1e-3", "--sr-patch", "0",
               "--max-steps", "2", "--batch-size", "2", "--sr-val-images", "2", "--run", "srgan")
    assert r.exit_code == 0, r.stdout + r.stderr
    cfg = json.loads((ws / "runs" / "srgan" / "config.json").read_text())
    assert cfg["perceptual"]["run"] == "rec" and cfg["adversarial"] == {"weight": 1e-3, "disc_lr_scale": 1.0}
    line = json.loads((ws / "runs" / "srgan" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"content", "perceptual", "adv_g", "adv_d"} <= set(line)
    ck = torch.load(ws / "runs" / "srgan" / "checkpoints" / "last.pt", weights_only=True)
    assert "disc" in ck and not any(k.startswith("perceptual") for k in ck["model"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--arch", "srresnet", "--perceptual", "runs/missing", "--sr-patch", "0"), "--perceptual runs/missing: no such recognition run"),
        (("--arch", "srcnn", "--adversarial", "0.001"), "use them with --arch srresnet"),
        (("--arch", "srresnet", "--perceptual", "runs/x"), "--perceptual needs whole faces"),
        (("--arch", "vdsr",), "unknown --arch 'vdsr'"),
        (("--lr-sizes", "200",), "must be below the input height 112px"),
        (("--task", "denoise"), "unknown --task 'denoise'"),
    ],
)
def test_bad_sr_options_are_one_line_errors(cli, ws, faces, extra, message) -> None:
    _list(cli, ws, faces)
    r = _train(cli, ws, "--max-steps", "1", *extra)
    out = r.stdout + r.stderr
    assert r.exit_code != 0 and message in " ".join(out.split()), out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    assert not (ws / "runs").exists()
