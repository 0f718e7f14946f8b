"""Batched MTCNN face detection with facenet-pytorch's networks and packaged weights.

facenet-pytorch's own ``MTCNN.detect`` accepts a batch, but its second and third stages crop and
resize every candidate box in a Python loop (one ``interpolate`` call per box, ~1,500 calls for
32 LFW images), which costs more than the networks themselves on a CPU. This module runs the same
three-stage cascade — same networks and weights, same pyramid, thresholds, NMS rules and box
arithmetic — with every resampling answered by one summed-area table per image: PyTorch's
``area`` interpolation (adaptive average pooling) averages rectangles, which the table gives
with four look-ups per output cell, for the whole pyramid and for every candidate box of a batch
at once. On a CPU the networks run in channels-last memory. Results agree with
``facenet_pytorch.MTCNN.detect`` to float rounding
(``test_batched_cascade_matches_facenet_pytorch`` in ``tests/test_align_geometry.py``), so
alignments match data prepared with it.

Batch invariance, by design. A photo's detections do not depend on which other photos share its
batch (``lrfr align --batch-size``, decode workers, a resumed run): oneDNN and MKL choose
convolution and matrix kernels by tensor shape and CPU, and kernels chosen for different shapes
round differently in the last bits, which the warp turns into different pixels. So every network
call has a shape that the photo alone decides, or a fixed one:

* P-net runs once per photo, on one canvas that holds the photo's whole pyramid
  (:func:`pyramid_layout`; its shape follows from the photo's size alone), never on a batch of
  photos, whose size would be the batch's;
* R- and O-net run on candidate boxes in chunks of a fixed number of rows (:data:`RNET_CHUNK`,
  :data:`ONET_CHUNK`; the last chunk padded with zeros): a box's row sees the same kernels
  whatever else is in its chunk (rows of a fixed-shape call do not interact, checked by
  ``test_network_rows_ignore_their_neighbours``);
* NMS and tie-breaking run per photo, on that photo's boxes in an order of its own (torchvision's
  ``batched_nms`` shifts boxes by an offset that depends on the whole batch, which moves the
  rounding of IoUs).

Tested exactly in ``tests/test_align_invariance.py``: batch sizes 1, 3, 4 and 16 give
byte-identical faces, also with other kernels forced (``ONEDNN_MAX_CPU_ISA=AVX2``,
``ATEN_CPU_CAPABILITY=default``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import LrfrError
from .invariant import ONET_CHUNK, ONET_CHUNK_GPU, RNET_CHUNK, RNET_CHUNK_GPU, pnet_on_canvas, pnet_out_size, pyramid_canvas, pyramid_layout, run_fixed_chunks
from .options import DEFAULT_THRESHOLDS


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, inds: torch.Tensor, iou: float) -> torch.Tensor:
    """Indices kept by torchvision's NMS run on each photo's boxes alone (``inds`` ascending).

    Returns the photos' survivors in photo order, each photo's best first. Unlike
    ``batched_nms`` (which offsets every photo's boxes by a batch-wide amount before computing
    IoUs in float32), what a photo keeps depends on its own boxes only. torchvision is imported
    on first use: importing it costs ~2.5 s of CLI start-up.
    """
    from torchvision.ops import nms

    keep = []
    for lo, hi in _runs(inds):
        keep.append(nms(boxes[lo:hi], scores[lo:hi], iou) + lo)
    if not keep:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.cat(keep)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision's NMS on one photo's boxes, best first."""
    from torchvision.ops import nms

    return nms(boxes, scores, iou)


def _runs(inds: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each run of equal values in an ascending index tensor."""
    if len(inds) == 0:
        return []
    idx = inds.detach().cpu().numpy()
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    ends = np.r_[starts[1:], len(idx)]
    return [(int(a), int(b)) for a, b in zip(starts, ends)]


DEFAULT_FACTOR = 0.709


@dataclass
class Detections:
    """Faces found in one image, best score first.

    ``boxes``: (n, 4) x1, y1, x2, y2; ``probs``: (n,); ``landmarks``: (n, 5, 2) x, y of left eye,
    right eye, nose, left and right mouth corner. All in pixel coordinates of the image that was
    given to :meth:`MtcnnDetector.detect` (float64).
    """

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:
        return len(self.probs)

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0, 5, 2)))

    def scaled(self, sx: float, sy: float) -> Detections:
        """Coordinates multiplied by (sx, sy): maps a resized image's detections to the original."""
        f4 = np.array([sx, sy, sx, sy])
        return Detections(self.boxes * f4, self.probs.copy(), self.landmarks * np.array([sx, sy]))

    def subset(self, keep: np.ndarray) -> Detections:
        return Detections(self.boxes[keep], self.probs[keep], self.landmarks[keep])


def _load_nets(device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    try:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError as e:  # pragma: no cover - facenet-pytorch is a declared dependency
        raise LrfrError("facenet-pytorch is not installed; run `make install`") from e
    nets = []
    for cls in (PNet, RNet, ONet):
        try:
            net = cls(pretrained=True)  # weights ship inside the wheel; nothing is downloaded
        except FileNotFoundError as e:
            raise LrfrError(f"facenet-pytorch's MTCNN weights are missing ({e}); reinstall facenet-pytorch") from e
        net = net.to(device).eval()
        if device.type == "cpu":
            # oneDNN's channels-last convolutions and poolings run these small networks 1.5-4x
            # faster than NCHW on a CPU (benchmarks/align.py --profile); results agree to float
            # rounding (tests/test_align_geometry.py compares with facenet-pytorch).
            net = net.to(memory_format=torch.channels_last)
        nets.append(net)
    return nets[0], nets[1], nets[2]


class MtcnnDetector:
    """MTCNN on ``device``; :meth:`detect` takes a batch of images of any sizes.

    ``min_face`` is MTCNN's ``min_face_size`` (pixels of the image handed to ``detect``): faces
    smaller than that are not searched for, and it sets the first pyramid scale 12/min_face.
    A photo's detections are the same whatever batch it comes in (see the module docstring).
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        min_face: int = 20,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        factor: float = DEFAULT_FACTOR,
    ) -> None:
        if min_face < 12:
            raise LrfrError(f"--min-face {min_face}: MTCNN cannot search for faces under 12 px (use >= 12)")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise LrfrError(f"--thresholds {thresholds}: expected three probabilities (P-, R-, O-net), e.g. 0.6,0.7,0.7")
        if not 0.1 <= factor < 1.0:
            raise LrfrError(f"pyramid factor {factor}: expected 0.1 <= factor < 1")
        self.device = torch.device(device)
        self.min_face = int(min_face)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.pnet, self.rnet, self.onet = _load_nets(self.device)
        cpu = self.device.type == "cpu"
        self.rnet_chunk, self.onet_chunk = (RNET_CHUNK, ONET_CHUNK) if cpu else (RNET_CHUNK_GPU, ONET_CHUNK_GPU)
        self._memory_format = torch.channels_last if cpu else torch.contiguous_format
        # seconds per stage (pnet: pyramid + summed-area tables, rnet, onet), accumulated
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ public
    def scales(self, h: int, w: int) -> list[float]:
        """The image pyramid's scales (empty when the image is smaller than ``min_face``)."""
        m = 12.0 / self.min_face
        minl = min(h, w) * m
        out = []
        s = m
        while minl >= 12:
            out.append(s)
            s *= self.factor
            minl *= self.factor
        return out

    def level_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """(height, width) of each pyramid level of an h x w image, as facenet-pytorch sizes them."""
        return [(int(h * s + 1), int(w * s + 1)) for s in self.scales(h, w)]

    @torch.inference_mode()
    def detect(self, images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> list[Detections]:
        """Detect faces in HxWx3 uint8 RGB images: an N x H x W x 3 array, or a list of any sizes.

        The pyramid stage runs photo by photo; the refinement stages run on the candidate boxes
        of all photos at once, in fixed-size chunks.
        """
        if isinstance(images, (np.ndarray, torch.Tensor)):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4:
                raise ValueError(f"detect() needs N x H x W x 3 images, got shape {tuple(images.shape)}")
        images = list(images)
        n = len(images)
        if n == 0:
            return []
        for im in images:
            if im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(f"detect() needs RGB images (H x W x 3), got shape {tuple(im.shape)}")
        hmax = max(int(im.shape[0]) for im in images)
        wmax = max(int(im.shape[1]) for im in images)
        sat = torch.zeros(n, hmax + 1, wmax + 1, 3, device=self.device, dtype=_sat_dtype(hmax, wmax))
        sizes = torch.zeros(n, 2, dtype=torch.long, device=self.device)  # (width, height) per image
        all_boxes, all_inds = [], []
        t = time.perf_counter()
        for i, im in enumerate(images):
            h, w = int(im.shape[0]), int(im.shape[1])
            sizes[i, 0], sizes[i, 1] = w, h
            if not self.scales(h, w):
                continue
            # The summed-area table serves every resampling of the cascade: the pyramid here and
            # the box crops of the later stages (four look-ups per output pixel).
            g = integral_image(im[None], sat.dtype, self.device)
            boxes = self._stage1(g)
            if len(boxes):
                sat[i, : h + 1, : w + 1] = g[0]
                all_boxes.append(boxes)
                all_inds.append(torch.full((len(boxes),), i, dtype=torch.long, device=self.device))
        t = self._tick("pnet", t)
        if not all_boxes:
            return [Detections.empty() for _ in range(n)]
        # photo order throughout: each photo's boxes stay together, in an order of their own
        boxes, inds = torch.cat(all_boxes), torch.cat(all_inds)
        boxes, inds = self._stage2(sat, sizes, boxes, inds)
        t = self._tick("rnet", t)
        points = torch.zeros(0, 5, 2, device=self.device)
        if len(boxes):
            boxes, inds, points = self._stage3(sat, sizes, boxes, inds)
        out = _split(boxes, inds, points, n)
        self._tick("onet", t)
        return out

    def _tick(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[key] = self.timings.get(key, 0.0) + now - since
        return now

    # ------------------------------------------------------------------ stages
    def _stage1(self, sat: torch.Tensor) -> torch.Tensor:
        """Candidate boxes (k, 5) of one photo (its summed-area table, 1 x H+1 x W+1 x 3)."""
        h, w = sat.shape[1] - 1, sat.shape[2] - 1
        scales = self.scales(h, w)
        levels = self.level_sizes(h, w)
        spots, _ = pyramid_layout(tuple(levels))
        canvas = pyramid_canvas(sat, tuple(levels), self._memory_format)
        reg_all, prob_all = pnet_on_canvas(self.pnet, canvas, levels, spots)
        all_boxes = []
        for scale, (lh, lw), (y, x) in zip(scales, levels, spots):
            oh, ow = pnet_out_size(lh), pnet_out_size(lw)
            score = prob_all[y // 2 : y // 2 + oh, x // 2 : x // 2 + ow]
            mask = score >= self.thresholds[0]
            idx = mask.nonzero()  # (k, 2): row, col
            if len(idx) == 0:
                continue
            s = score[mask]
            r = reg_all[:, y // 2 : y // 2 + oh, x // 2 : x // 2 + ow].permute(1, 2, 0)[mask]  # (k, 4)
            xy = idx[:, [1, 0]].to(r.dtype)
            q1 = torch.floor((2 * xy + 1) / scale)
            q2 = torch.floor((2 * xy + 12) / scale)
            b = torch.cat([q1, q2, s[:, None], r], dim=1)
            all_boxes.append(b[_nms(b[:, :4], b[:, 4], 0.5)])
        if not all_boxes:
            return torch.zeros(0, 5, device=self.device)
        boxes = torch.cat(all_boxes)
        boxes = boxes[_nms(boxes[:, :4], boxes[:, 4], 0.7)]
        bw = boxes[:, 2] - boxes[:, 0]
        bh = boxes[:, 3] - boxes[:, 1]
        out = torch.stack(
            [
                boxes[:, 0] + boxes[:, 5] * bw,
                boxes[:, 1] + boxes[:, 6] * bh,
                boxes[:, 2] + boxes[:, 7] * bw,
                boxes[:, 3] + boxes[:, 8] * bh,
                boxes[:, 4],
            ],
            dim=1,
        )
        return _square(out)

    def _stage2(self, sat: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, inds, crops = self._crops(sat, sizes, boxes, inds, 24)
        if len(boxes) == 0:
            return boxes, inds
        reg, prob = run_fixed_chunks(self.rnet, crops, self.rnet_chunk, self._memory_format)
        score = prob[:, 1]
        ok = score > self.thresholds[1]
        boxes = torch.cat([boxes[ok, :4], score[ok, None]], dim=1)
        inds, reg = inds[ok], reg[ok]
        keep = nms_per_image(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds, reg = boxes[keep], inds[keep], reg[keep]
        return _square(_regress(boxes, reg)), inds

    def _stage3(self, sat: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, inds, crops = self._crops(sat, sizes, boxes, inds, 48)
        if len(boxes) == 0:
            return boxes, inds, torch.zeros(0, 5, 2, device=self.device)
        reg, pts, prob = run_fixed_chunks(self.onet, crops, self.onet_chunk, self._memory_format)
        score = prob[:, 1]
        ok = score > self.thresholds[2]
        boxes = torch.cat([boxes[ok, :4], score[ok, None]], dim=1)
        inds, reg, pts = inds[ok], reg[ok], pts[ok]
        bw = boxes[:, 2] - boxes[:, 0] + 1
        bh = boxes[:, 3] - boxes[:, 1] + 1
        px = bw[:, None] * pts[:, :5] + boxes[:, 0:1] - 1
        py = bh[:, None] * pts[:, 5:] + boxes[:, 1:2] - 1
        points = torch.stack([px, py], dim=2)
        boxes = _regress(boxes, reg)
        keep = _nms_min(boxes[:, :4], boxes[:, 4], inds, 0.7)
        return boxes[keep], inds[keep], points[keep]

    def _crops(self, sat: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor, inds: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Crop every box (clamped to its image like MTCNN's ``pad``) and area-resize to size x size."""
        b = boxes[:, :4].trunc().to(torch.long)
        w, h = sizes[inds, 0], sizes[inds, 1]
        x0 = b[:, 0].clamp(min=1) - 1
        y0 = b[:, 1].clamp(min=1) - 1
        x1 = torch.minimum(b[:, 2], w)
        y1 = torch.minimum(b[:, 3], h)
        valid = (x1 > x0) & (y1 > y0)
        if not bool(valid.all()):
            boxes, inds, x0, y0, x1, y1 = boxes[valid], inds[valid], x0[valid], y0[valid], x1[valid], y1[valid]
        crops = crop_from_integral(sat, inds, y0, y1, x0, x1, size)
        return boxes, inds, (crops - 127.5) * 0.0078125


# ---------------------------------------------------------------------- helpers
def _cell_bounds(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, out) first and one-past-last input index of each adaptive-average-pooling cell.

    PyTorch's rule: cell i of ``out`` covers floor(i*L/out) .. ceil((i+1)*L/out) - 1.
    """
    i = torch.arange(out, device=start.device)
    L = length[:, None]
    lo = torch.div(i[None] * L, out, rounding_mode="floor")
    hi = -torch.div(-(i[None] + 1) * L, out, rounding_mode="floor")
    return start[:, None] + lo, start[:, None] + hi


def _sat_dtype(h: int, w: int) -> torch.dtype:
    """int32 while 255*H*W fits (photos up to ~8 megapixels), else int64: sums stay exact."""
    return torch.int32 if 255 * h * w < 2**31 else torch.int64


def integral_image(imgs: torch.Tensor | np.ndarray, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Summed-area table (N, H+1, W+1, C) of integer-valued NHWC images, in exact integers.

    Channels last: a look-up fetches the C sums of one position as one contiguous row. uint8
    arrays bound for the CPU go through OpenCV's ``integral`` (10x faster than two cumsums).
    """
    n, h, w, c = imgs.shape
    dtype = dtype or _sat_dtype(h, w)
    device = torch.device(device) if device is not None else (imgs.device if isinstance(imgs, torch.Tensor) else torch.device("cpu"))
    if isinstance(imgs, np.ndarray) and imgs.dtype == np.uint8 and device.type == "cpu" and dtype == torch.int32 and c <= 4:
        return torch.from_numpy(np.stack([cv2.integral(im) for im in imgs]).reshape(n, h + 1, w + 1, c))
    x = torch.as_tensor(imgs, device=device)
    sat = torch.zeros(n, h + 1, w + 1, c, device=device, dtype=dtype)
    sat[:, 1:, 1:] = x.to(dtype).cumsum(1, dtype=dtype).cumsum(2, dtype=dtype)
    return sat


def resize_from_integral(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """``interpolate(images, (out_h, out_w), mode="area")`` of whole images from their table.

    Returns (N, C, out_h, out_w) float32 in channels-last memory. Separable: two row look-ups
    give each output row's band sums, two column look-ups finish the rectangles.
    """
    _, H1, W1, _ = sat.shape
    dev = sat.device
    zero = torch.zeros(1, dtype=torch.long, device=dev)
    r0, r1 = (v[0] for v in _cell_bounds(zero, torch.full((1,), H1 - 1, device=dev), out_h))
    c0, c1 = (v[0] for v in _cell_bounds(zero, torch.full((1,), W1 - 1, device=dev), out_w))
    band = sat.index_select(1, r1) - sat.index_select(1, r0)  # (N, out_h, W1, C)
    total = band.index_select(2, c1) - band.index_select(2, c0)  # (N, out_h, out_w, C)
    area = ((r1 - r0)[:, None] * (c1 - c0)[None, :]).to(torch.float32)
    return (total.to(torch.float32) / area[None, :, :, None]).permute(0, 3, 1, 2)


def crop_resize_area(
    imgs: torch.Tensor,
    inds: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    size: int,
) -> torch.Tensor:
    """``interpolate(imgs[i, :, y0:y1, x0:x1], (size, size), mode="area")`` for every box at once (NCHW in and out)."""
    sat = integral_image(imgs.permute(0, 2, 3, 1))
    return crop_from_integral(sat, inds, y0, y1, x0, x1, size).to(imgs.dtype).contiguous()


def crop_from_integral(
    sat: torch.Tensor,
    inds: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    size: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """Area-resampled crops (B, C, size, size) float32 (channels-last memory) from an NHWC summed-area table.

    Area resampling (adaptive average pooling) averages axis-aligned rectangles, so the table
    answers every output cell of every box with four look-ups, whatever the box sizes. Pixel
    sums are exact integers; only the final division rounds.
    """
    _, H1, W1, c = sat.shape
    out = torch.empty(len(inds), size, size, c, device=sat.device, dtype=torch.float32)
    if len(inds) == 0:
        return out.permute(0, 3, 1, 2)
    flat = sat.reshape(-1, c)  # one row of C sums per (image, y, x)
    for k in range(0, len(inds), chunk):
        sl = slice(k, k + chunk)
        r0, r1 = _cell_bounds(y0[sl], y1[sl] - y0[sl], size)  # (b, size)
        c0, c1 = _cell_bounds(x0[sl], x1[sl] - x0[sl], size)
        base = (inds[sl] * (H1 * W1))[:, None]
        row0, row1 = (base + r0 * W1)[:, :, None], (base + r1 * W1)[:, :, None]  # (b, size, 1)
        col0, col1 = c0[:, None, :], c1[:, None, :]  # (b, 1, size)

        def look(idx: torch.Tensor) -> torch.Tensor:
            return flat.index_select(0, idx.reshape(-1)).view(*idx.shape, c)

        total = look(row1 + col1) - look(row0 + col1) - look(row1 + col0) + look(row0 + col0)
        area = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :]).to(torch.float32)
        out[sl] = total.to(torch.float32) / area[..., None]
    return out.permute(0, 3, 1, 2)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Grow each box to a square about its centre (MTCNN's ``rerec``)."""
    boxes = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = torch.maximum(w, h)
    boxes[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Apply the networks' box offsets (relative to the +1-inclusive box size)."""
    boxes = boxes.clone()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += reg[:, 0] * w
    boxes[:, 1] += reg[:, 1] * h
    boxes[:, 2] += reg[:, 2] * w
    boxes[:, 3] += reg[:, 3] * h
    return boxes


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, inds: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS per photo where overlap = intersection / smaller area (MTCNN's last stage).

    ``inds`` ascending; each photo is handled on its own boxes, in their incoming order.
    """
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    b = boxes.detach().cpu().double().numpy()
    s = scores.detach().cpu().float().numpy()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    keep = []
    for lo, hi in _runs(inds):
        # Best first, ties broken as facenet-pytorch does (numpy's default argsort of the
        # photo's float32 scores, taken from the end): clear faces often score exactly 1.0 in
        # float32 twice, and the tie decides which of two overlapping boxes is kept.
        order = lo + np.argsort(s[lo:hi])[::-1]
        alive = np.zeros(len(b), dtype=bool)
        alive[lo:hi] = True
        for i in order:
            if not alive[i]:
                continue
            keep.append(i)
            alive[i] = False
            j = lo + np.nonzero(alive[lo:hi])[0]
            if len(j) == 0:
                continue
            iw = np.maximum(0.0, np.minimum(b[i, 2], b[j, 2]) - np.maximum(b[i, 0], b[j, 0]) + 1)
            ih = np.maximum(0.0, np.minimum(b[i, 3], b[j, 3]) - np.maximum(b[i, 1], b[j, 1]) + 1)
            overlap = iw * ih / np.minimum(area[i], area[j])
            alive[j[overlap > threshold]] = False
    return torch.as_tensor(keep, dtype=torch.long, device=boxes.device)


def _split(boxes: torch.Tensor, inds: torch.Tensor, points: torch.Tensor, n: int) -> list[Detections]:
    b = boxes.detach().cpu().double().numpy().reshape(-1, 5)
    p = points.detach().cpu().double().numpy().reshape(-1, 5, 2)
    idx = inds.detach().cpu().numpy()
    out = []
    for i in range(n):
        sel = np.nonzero(idx == i)[0]
        sel = sel[np.argsort(-b[sel, 4], kind="stable")]
        out.append(Detections(b[sel, :4].copy(), b[sel, 4].copy(), p[sel].copy()))
    return out
