"""Training data sources: the packed cache and RecordIO give the JPEG path's pixels; sampler."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.data.cache import CachedDataset, build_cache
from lrfr_cli.data.datasets import EpochBatchSampler, ImageFileDataset, resolve_training_data
from lrfr_cli.data.recordio import MAGIC, RecordIODataset, RecordIOReader, write_recordio
from lrfr_cli.errors import LrfrError
from lrfr_cli.protocols.lfw import validation_pairs


def make_faces(root: Path, identities: int = 3, per: int = 4, size: int = 112, fmt: str = "jpg") -> Path:
    rng = np.random.default_rng(0)
    for i in range(identities):
        for j in range(per):
            d = root / f"id{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{j}.{fmt}", quality=90)
    return root


def test_cache_equals_jpeg_path(tmp_path):
    root = make_faces(tmp_path / "faces")
    ts = resolve_training_data(root, None, tmp_path)
    assert (ts.kind, len(ts), ts.num_classes) == ("folder", 12, 3)
    ds = ImageFileDataset(ts.root, ts.entries)
    n = build_cache(ds, tmp_path / "cache")
    cached = CachedDataset(tmp_path / "cache")
    assert n == len(cached) == 12
    raw = np.load(tmp_path / "cache" / "images.npy")
    assert raw.shape == (12, 112, 112, 3) and raw.dtype == np.uint8
    for code in range(24):  # every image, flipped and not
        a, la = ds[code]
        b, lb = cached[code]
        assert la == lb
        assert torch.equal(a, b)
    # The decoded pixels are the file's (PIL) pixels; code 2i+1 is the mirror image.
    first = np.asarray(Image.open(root / ts.entries[0][0]).convert("RGB"))
    assert np.array_equal(ds[0][0].permute(1, 2, 0).numpy(), first)
    assert np.array_equal(ds[1][0].permute(1, 2, 0).numpy(), first[:, ::-1])


def test_recordio_equals_jpeg_path(tmp_path):
    root = make_faces(tmp_path / "faces")
    ts = resolve_training_data(root, None, tmp_path)
    items = [((root / rel).read_bytes(), lab) for rel, lab in ts.entries]
    rec = tmp_path / "rec"
    write_recordio(rec, items)
    # The file really is MXNet RecordIO: magic, length word, IRHeader, padding to 4 bytes.
    blob = (rec / "train.rec").read_bytes()
    idx = dict(tuple(map(int, ln.split("\t"))) for ln in (rec / "train.idx").read_text().split("\n") if ln)
    off = idx[1]
    magic, lrec = struct.unpack_from("<II", blob, off)
    assert magic == MAGIC and lrec >> 29 == 0
    flag, label, key, _ = struct.unpack_from("<IfQQ", blob, off + 8)
    assert (flag, label, key) == (0, float(ts.entries[0][1]), 1)
    assert blob[off + 8 + 24 : off + 8 + 24 + 2] == b"\xff\xd8"  # the JPEG starts right after the header
    assert all(o % 4 == 0 for o in idx.values())
    # Through --data resolution and the dataset: same images and labels as the JPEG files.
    rts = resolve_training_data(rec, None, tmp_path)
    assert (rts.kind, len(rts), rts.num_classes) == ("recordio", 12, 3)
    rds = RecordIODataset(rec)
    jds = ImageFileDataset(ts.root, ts.entries)
    for code in range(24):
        a, la = jds[code]
        b, lb = rds[code]
        assert la == lb and torch.equal(a, b)


def test_recordio_multipart_record_and_label_arrays(tmp_path):
    """A payload containing the magic number is split into parts and joined back."""
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112, 3), 7, np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    payload = png + b"\x00" * ((-len(png)) % 4) + struct.pack("<I", MAGIC) + b"tail"  # trailing bytes PNG readers ignore
    write_recordio(tmp_path, [(payload, 2), (png, 0)], header=False)
    blob = (tmp_path / "train.rec").read_bytes()
    assert struct.unpack_from("<I", blob, 4)[0] >> 29 == 1  # written as a first part + a last part
    r = RecordIOReader(tmp_path)
    assert r.keys == [0, 1]
    assert r.read(0).endswith(struct.pack("<I", MAGIC) + b"tail")
    assert r.image(0).shape == (112, 112, 3) and int(r.image(0)[0, 0, 0]) == 7
    assert r.labels().tolist() == [2, 0]


def test_recordio_corrupt_file_is_a_clear_error(tmp_path):
    root = make_faces(tmp_path / "faces", identities=2, per=1)
    ts = resolve_training_data(root, None, tmp_path)
    write_recordio(tmp_path / "rec", [((root / r).read_bytes(), lab) for r, lab in ts.entries])
    blob = bytearray((tmp_path / "rec" / "train.rec").read_bytes())
    off = int((tmp_path / "rec" / "train.idx").read_text().split("\n")[1].split("\t")[1])
    blob[off : off + 4] = b"XXXX"
    (tmp_path / "rec" / "train.rec").write_bytes(bytes(blob))
    with pytest.raises(LrfrError, match="bad magic"):
        RecordIOReader(tmp_path / "rec").read(1)


def test_sampler_is_deterministic_and_ddp_shards_partition_the_batch():
    one = list(EpochBatchSampler(50, 8, seed=1, epoch=3))
    assert one == list(EpochBatchSampler(50, 8, seed=1, epoch=3))
    assert one != list(EpochBatchSampler(50, 8, seed=1, epoch=4))
    assert len(one) == 6 and all(len(b) == 8 for b in one)  # the partial batch is dropped
    idx = [c // 2 for b in one for c in b]
    assert len(set(idx)) == 48  # a permutation: no image twice per epoch
    r0 = list(EpochBatchSampler(50, 8, seed=1, epoch=3, rank=0, world_size=2))
    r1 = list(EpochBatchSampler(50, 8, seed=1, epoch=3, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == one
    assert list(EpochBatchSampler(50, 8, seed=1, epoch=3, start=4)) == one[4:]  # resume mid-epoch
    assert {c % 2 for b in one for c in b} == {0, 1}
    assert {c % 2 for b in EpochBatchSampler(50, 8, 1, flip=False) for c in b} == {0}
    with pytest.raises(LrfrError, match="fewer than --batch-size"):
        EpochBatchSampler(5, 8, 0)
    with pytest.raises(LrfrError, match="divisible"):
        EpochBatchSampler(50, 9, 0, world_size=2)


def test_read_pairs_lfw_and_generic_formats(tmp_path):
    """train's --val-pairs reads through the protocol's one parser (lfw.read_pairs)."""
    root = tmp_path / "lfw-deepfunneled"
    for name, n in (("A_B", 2), ("C_D", 1)):
        (root / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name / f"{name}_{i:04d}.jpg")
    (tmp_path / "pairs.txt").write_text("1\nA_B\t1\t2\nA_B\t1\tC_D\t1\n")
    pairs = validation_pairs(tmp_path / "pairs.txt")
    assert pairs == [(root / "A_B/A_B_0001.jpg", root / "A_B/A_B_0002.jpg", True), (root / "A_B/A_B_0001.jpg", root / "C_D/C_D_0001.jpg", False)]
    assert pairs == validation_pairs(tmp_path / "pairs.txt")  # the shim adds nothing
    # The dataset folder (holding lfw-deepfunneled/) works as the root too.
    assert validation_pairs(tmp_path / "pairs.txt", tmp_path) == pairs
    (tmp_path / "generic.txt").write_text("A_B/A_B_0001.jpg C_D/C_D_0001.jpg 0\n")
    assert validation_pairs(tmp_path / "generic.txt", root) == [(root / "A_B/A_B_0001.jpg", root / "C_D/C_D_0001.jpg", False)]
    # An aligned copy written as PNG is found under its LFW name.
    (root / "C_D" / "C_D_0001.jpg").rename(root / "C_D" / "C_D_0001.png")
    assert validation_pairs(tmp_path / "pairs.txt")[1][1] == root / "C_D/C_D_0001.png"
    # The protocol's checks come along: a header that does not match, a missing image (with its line).
    (tmp_path / "short.txt").write_text("2\nA_B\t1\t2\nA_B\t1\tC_D\t1\n")
    with pytest.raises(LrfrError, match="header promises 1 fold"):
        validation_pairs(tmp_path / "short.txt")
    (tmp_path / "bad.txt").write_text("A_B\t1\t2\nA_B\t1\t9\n")
    with pytest.raises(LrfrError, match=r"bad\.txt:2: image .*A_B_0009\.jpg not found"):
        validation_pairs(tmp_path / "bad.txt")
    with pytest.raises(LrfrError, match="does not exist"):
        validation_pairs(tmp_path / "nope.txt")
