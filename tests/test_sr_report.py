"""`lrfr report` with SR evals: the bicubic and the SR row of one recogniser side by side (numbers
equal to the eval JSONs), the SR network's PSNR/SSIM beside them, and `lrfr sr`'s contact sheet
copied into the report."""

from __future__ import annotations

import json
import shutil

from test_sr_eval import _args, counter, lfw_small, make_recogniser, make_sr_run  # noqa: F401 - fixtures

from lrfr_cli.data.images import load_rgb


def test_report_puts_bicubic_and_sr_rows_side_by_side_with_the_contact_sheet(cli, ws, data_dir, lfw_small, counter, tmp_path) -> None:  # noqa: F811
    make_recogniser(ws)
    make_sr_run(ws)
    base = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112")).json()
    srd = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112", "--sr", "runs/srfake")).json()
    faces = tmp_path / "faces" / "a"
    faces.mkdir(parents=True)
    src = next((data_dir / "celeba_subset" / "images").iterdir())
    for f in sorted(src.glob("*.jpg"))[:2]:
        shutil.copy(f, faces / f.name)
    assert cli(ws, "sr", faces.parent, "--model", "srfake", "--out", "demo", "--sheet", "2", "--quiet").exit_code == 0

    r = cli(ws, "report", "--format", "json")
    assert r.exit_code == 0, r.stdout + r.stderr
    runs = {x["run"]: x for x in json.loads(r.stdout)["runs"]}
    assert set(runs) == {"rec", "rec+sr:srfake"}
    key = "lfw-small_pairs/hr-lr@16"
    assert runs["rec"]["metrics"][key] == base["results"]["16"]["accuracy"]
    assert runs["rec+sr:srfake"]["metrics"][key] == srd["results"]["16"]["accuracy"]
    assert runs["rec+sr:srfake"]["super_resolution"]["checkpoint_sha1"] == srd["super_resolution"]["checkpoint_sha1"]
    assert "super_resolution" not in runs["rec"]

    md = cli(ws, "report", "--format", "md").stdout
    assert "| rec+sr:srfake | srfake | srcnn | 16 | 16 | 25.50 | 25.00 | 0.7500 | 0.7000 |" in md
    out = ws / "reports" / "latest"
    sheet = out / "sr_contact_demo_16px.png"
    assert sheet.read_bytes() == (ws / "sr" / "demo" / "contact_16px.png").read_bytes() and load_rgb(sheet).shape[2] == 3
    # each row its own ROC figure (the SR eval does not overwrite the bicubic one)
    assert (out / "roc_rec_sr_srfake_lfw-small_pairs_hr-lr.png").is_file() and (out / "roc_rec_lfw-small_pairs_hr-lr.png").is_file()
