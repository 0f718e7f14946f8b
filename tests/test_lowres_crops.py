"""SurvFace/TinyFace crops keep their aspect ratio: longer side to 112, short side edge-padded.

Every expected size and offset below is worked out by hand in the comments, and the content is
compared with OpenCV's own resize of the crop to that size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lrfr_cli.data.sources import ResizedCrops, letterbox, letterbox_shape
from lrfr_cli.protocols import survface, tinyface


def _crop(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_tall_small_crop_is_enlarged_bicubic_and_padded_left_right():
    crop = _crop(20, 14)  # h=20, w=14: scale 112/20 = 5.6 -> width 14*5.6 = 78.4 -> 78; pad 34 = 17 + 17
    out = letterbox(crop, 112)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    assert letterbox_shape(20, 14, 112) == (112, 78)
    np.testing.assert_array_equal(out[:, 17:95], cv2.resize(crop, (78, 112), interpolation=cv2.INTER_CUBIC))
    # edge replication: every padded column repeats the nearest content column
    np.testing.assert_array_equal(out[:, :17], np.repeat(out[:, 17:18], 17, axis=1))
    np.testing.assert_array_equal(out[:, 95:], np.repeat(out[:, 94:95], 17, axis=1))
    # not a stretch: the old square resize gives a different picture
    assert not np.array_equal(out, cv2.resize(crop, (112, 112), interpolation=cv2.INTER_CUBIC))


def test_wide_large_crop_is_shrunk_with_area_and_padded_top_bottom_odd():
    crop = _crop(150, 230, 1)  # scale 112/230 -> height 150*112/230 = 73.04 -> 73; pad 39 = 19 top + 20 bottom
    out = letterbox(crop, 112)
    assert letterbox_shape(150, 230, 112) == (73, 112)
    np.testing.assert_array_equal(out[19:92], cv2.resize(crop, (112, 73), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(out[:19], np.repeat(out[19:20], 19, axis=0))
    np.testing.assert_array_equal(out[92:], np.repeat(out[91:92], 20, axis=0))


def test_zero_padding_option():
    crop = _crop(20, 14, 2)
    out = letterbox(crop, 112, pad="zero")
    assert (out[:, :17] == 0).all() and (out[:, 95:] == 0).all()
    np.testing.assert_array_equal(out[:, 17:95], cv2.resize(crop, (78, 112), interpolation=cv2.INTER_CUBIC))
    with pytest.raises(ValueError, match="pad"):
        letterbox(crop, 112, pad="mirror")


def test_filter_is_chosen_from_both_axes():
    # 113x20: scale 112/113, width 20*0.991 = 19.82 -> 20 (unchanged), height shrinks -> INTER_AREA,
    # not the cubic that a "width does not shrink" rule would pick. Pad 92 = 46 + 46.
    crop = _crop(113, 20, 3)
    out = letterbox(crop, 112)
    assert letterbox_shape(113, 20, 112) == (112, 20)
    np.testing.assert_array_equal(out[:, 46:66], cv2.resize(crop, (20, 112), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(out[:, 46:66], cv2.resize(crop, (20, 112), interpolation=cv2.INTER_CUBIC))
    # square crops: plain resize, nothing padded; 112 is returned as it is
    sq = _crop(24, 24, 4)
    np.testing.assert_array_equal(letterbox(sq, 112), cv2.resize(sq, (112, 112), interpolation=cv2.INTER_CUBIC))
    big = _crop(112, 112, 5)
    np.testing.assert_array_equal(letterbox(big, 112), big)
    # a 1-pixel-wide sliver still gives a 1-pixel column, never 0
    assert letterbox_shape(300, 1, 112) == (112, 1)
    assert letterbox(_crop(300, 1, 6), 112).shape == (112, 112, 3)


def test_survface_and_tinyface_plans_load_letterboxed_crops(tmp_path: Path):
    from scipy.io import savemat

    crop = _crop(24, 20, 7)  # 24x20: width 20*112/24 = 93.33 -> 93; pad 19 = 9 left + 10 right
    expect = np.empty((112, 112, 3), np.uint8)
    expect[:, 9:102] = cv2.resize(crop, (93, 112), interpolation=cv2.INTER_CUBIC)
    expect[:, :9] = expect[:, 9:10]
    expect[:, 102:] = expect[:, 101:102]

    base = tmp_path / "sf" / "Face_Verification_Test_Set"
    (base / "verification_images").mkdir(parents=True)
    for n in ("a.png", "b.png"):
        cv2.imwrite(str(base / "verification_images" / n), crop[:, :, ::-1])  # lossless, RGB on disk
    cell = np.array([["a.png", "b.png"]], dtype=object)
    savemat(base / "positive_pairs_names.mat", {"positive_pairs_names": cell})
    savemat(base / "negative_pairs_names.mat", {"negative_pairs_names": cell})
    sf = survface.plan_survface(tmp_path / "sf")
    assert isinstance(sf.images, ResizedCrops)
    np.testing.assert_array_equal(sf.images.load("a.png"), expect)
    assert "aspect kept" in sf.images.describe()["align"]  # the cache key changes with the geometry

    tb = tmp_path / "tf" / "Testing_Set"
    for sub, name in (("Probe", "1_1.png"), ("Gallery_Match", "1_2.png")):
        (tb / sub).mkdir(parents=True)
        cv2.imwrite(str(tb / sub / name), crop[:, :, ::-1])
    tf = tinyface.plan_tinyface(tmp_path / "tf", distractors=False)
    np.testing.assert_array_equal(tf.images.load("Probe/1_1.png"), expect)
