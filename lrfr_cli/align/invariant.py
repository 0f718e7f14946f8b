"""Network calls whose tensor shapes never depend on the batch: what makes alignment batch-invariant.

oneDNN and MKL choose their convolution and matrix kernels by tensor shape (and CPU), and two
kernels sum the same products in different orders, so a network's output for one photo moves in
the last bits when the batch around it changes. MTCNN's landmarks follow, and the similarity warp
turns a changed landmark into changed pixels (a few grey levels on ~1 % of a face). Measured on
LFW photos before this module: batch 1 vs 4 gave 3-9 of 24 faces with other pixels, on AMD and
Intel alike. Three rules remove the dependence instead of hoping it is small:

* P-net sees one photo per call, its whole pyramid packed on one canvas whose layout follows from
  the photo's size alone (:func:`pyramid_layout`). Batching photos in P-net (N x 3 x h x w) gave
  other bits for N = 1, 3, 16 and 24, and even for odd N with 2 threads; one canvas per photo is
  also cheaper than one call per pyramid level. Its 1x1 head runs on one thread (the only
  layers whose bits followed the thread count, which ``--threads`` and ``--workers`` change).
* R- and O-net see a fixed number of rows per call (:func:`run_fixed_chunks`), the last chunk
  padded with zeros. In a call of fixed shape a row's result does not depend on its position or
  on the other rows (convolutions loop over the batch outside their sums; the dense layers' GEMM
  sums each row in one order), checked on every run of the suite by
  ``tests/test_align_invariance.py::test_network_rows_ignore_their_neighbours``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

# Candidate boxes per R-/O-net call on a CPU. Cache-sized chunks run fastest per box (R-net: ~40
# boxes per LFW photo reach it, O-net ~10); small fixed chunks keep the padding of the last one
# cheap (benchmarks/align.py). On a GPU, bigger fixed chunks (padding costs nearly nothing there).
RNET_CHUNK = 32
ONET_CHUNK = 8
RNET_CHUNK_GPU = 1024
ONET_CHUNK_GPU = 256


def run_fixed_chunks(net: torch.nn.Module, x: torch.Tensor, chunk: int, memory_format: torch.memory_format = torch.contiguous_format) -> tuple[torch.Tensor, ...]:
    """``net`` on the rows of ``x`` in calls of exactly ``chunk`` rows (the last padded with zeros).

    Every call has the shape (chunk, *x.shape[1:]), so every row meets the same kernels whatever
    the number of rows: a box's outputs do not depend on how many boxes the batch's other photos
    brought.
    """
    n = len(x)
    pad = -n % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    x = x.contiguous(memory_format=memory_format)
    outs = [net(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    return tuple(torch.cat(parts)[:n] for parts in zip(*outs))


def pnet_out_size(side: int) -> int:
    """P-net's output cells along a side of ``side`` input pixels (3x3 conv, 2x2/2 ceil pool, two 3x3 convs)."""
    return (side - 1) // 2 - 4


@lru_cache(maxsize=256)
def pyramid_layout(levels: tuple[tuple[int, int], ...]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Where each pyramid level goes on one canvas: ((y, x) per level, (canvas height, width)).

    ``levels`` are (height, width), largest first. Levels sit at even offsets (P-net's stride is
    2, so a level's output cells are exactly those of the level alone) on a 2-pixel grid without
    overlapping; a level may touch its neighbours, since the output cells that see two levels
    are simply not read. Placement is bottom-left fill in a canvas as tall as the largest level:
    each level goes to the leftmost, then topmost, free spot (~90 % of the canvas is used for
    LFW's 250x250 photos). A pure function of the level sizes, hence of the photo's size.
    """
    cells = [((h + 1) // 2, (w + 1) // 2) for h, w in levels]
    rows = cells[0][0]
    cols = sum(c for _, c in cells)
    occupied = np.zeros((rows, cols), dtype=np.int32)
    spots = []
    right = 0
    for ch, cw in cells:
        sat = np.zeros((rows + 1, cols + 1), dtype=np.int32)
        sat[1:, 1:] = occupied.cumsum(0).cumsum(1)
        used = sat[ch:, cw:] - sat[:-ch, cw:] - sat[ch:, :-cw] + sat[:-ch, :-cw]  # (y, x) of the window's corner
        x, y = np.argwhere((used == 0).T)[0]  # first free spot, columns first
        occupied[y : y + ch, x : x + cw] = 1
        spots.append((2 * int(y), 2 * int(x)))
        right = max(right, int(x) + cw)
    return spots, (2 * rows, 2 * right)


@lru_cache(maxsize=16)
def _canvas_gather(image_hw: tuple[int, int], levels: tuple[tuple[int, int], ...]) -> tuple[np.ndarray, ...]:
    """Flat indices that fill a pyramid canvas from a photo's summed-area table in one gather.

    Returns (canvas pixel, table positions of the four corners of its area cell, cell area) for
    every pixel of every level; the same cells as :func:`~lrfr_cli.align.mtcnn.resize_from_integral`
    (PyTorch's adaptive-average-pooling rule), so the values are the same to the bit.
    """
    h, w = image_hw
    spots, (_, cw) = pyramid_layout(levels)
    parts: list[list[np.ndarray]] = [[], [], [], [], [], []]
    for (lh, lw), (y, x) in zip(levels, spots):
        r0, r1 = _cells(h, lh)
        c0, c1 = _cells(w, lw)
        pix = ((y + np.arange(lh))[:, None] * cw + (x + np.arange(lw))[None, :]).ravel()
        for k, (r, c) in enumerate(((r0, c0), (r0, c1), (r1, c0), (r1, c1))):
            parts[k].append((r[:, None] * (w + 1) + c[None, :]).ravel())
        parts[4].append(pix)
        parts[5].append(((r1 - r0)[:, None] * (c1 - c0)[None, :]).ravel())
    return tuple(np.concatenate(p) for p in parts)


def _cells(length: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last input index of each of ``out`` adaptive-pooling cells over ``length``."""
    i = np.arange(out)
    return (i * length) // out, -((-(i + 1) * length) // out)


def pyramid_canvas(sat: torch.Tensor, levels: tuple[tuple[int, int], ...], memory_format: torch.memory_format) -> torch.Tensor:
    """The photo's pyramid levels, area-resampled from its summed-area table (1 x H+1 x W+1 x 3)
    and normalised as P-net expects, on one 1 x 3 x h x w canvas (0 between levels)."""
    h, w = sat.shape[1] - 1, sat.shape[2] - 1
    _, (ch, cw) = pyramid_layout(levels)
    i00, i01, i10, i11, pix, area = (torch.from_numpy(a).to(sat.device) for a in _canvas_gather((h, w), levels))
    flat = sat[0].reshape(-1, 3)

    def look(idx: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, idx)

    total = look(i11) - look(i01) - look(i10) + look(i00)
    canvas = torch.zeros(ch * cw, 3, device=sat.device)
    canvas[pix] = (total.to(torch.float32) / area.to(torch.float32)[:, None] - 127.5) * 0.0078125
    canvas = canvas.view(1, ch, cw, 3).permute(0, 3, 1, 2)  # channels-last memory
    return canvas.contiguous(memory_format=memory_format)


def pnet_on_canvas(pnet: torch.nn.Module, canvas: torch.Tensor, levels: Sequence[tuple[int, int]], spots: Sequence[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """facenet-pytorch's ``PNet.forward`` on a canvas of pyramid levels: (box offsets, probabilities).

    Returns (4, h, w) offsets and (h, w) face probabilities; the output cells of the level at
    (y, x) start at (y/2, x/2). Two differences from running each level alone:

    * the 2x2 max-pool rounds its output size up (``ceil_mode``), so a level with an odd side ends
      with a window that holds one column (or row) of its own and one from the canvas beyond it.
      That outside column is overwritten with a copy of the level's last one before pooling, so
      the window's maximum is the level's own, as when it runs alone;
    * the 1x1 head and its softmax run on one thread (:func:`_pnet_head`), because oneDNN's 1x1
      convolutions sum in an order that depends on the number of threads (measured: 1 vs 2
      threads moved P-net's probabilities by 2e-6 and 8 of 24 LFW faces by a few grey levels),
      and the thread count follows ``--threads`` and ``--workers``. The 3x3 convolutions, PReLU
      and pooling gave the same bits with 1, 2 and 3 threads.
    """
    x = pnet.prelu1(pnet.conv1(canvas))
    for (h, w), (y, x0) in zip(levels, spots):
        if w % 2:  # conv1 leaves w - 2 columns: odd, so the last pool window is half outside
            x[:, :, y : y + h - 2, x0 + w - 2] = x[:, :, y : y + h - 2, x0 + w - 3]
        if h % 2:
            x[:, :, y + h - 2, x0 : x0 + w - 1] = x[:, :, y + h - 3, x0 : x0 + w - 1]
    x = pnet.pool1(x)
    x = pnet.prelu2(pnet.conv2(x))
    x = pnet.prelu3(pnet.conv3(x))
    return _pnet_head(pnet, x[0])


def _pnet_head(pnet: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """P-net's 1x1 convolutions (``conv4_2`` offsets, ``conv4_1`` + softmax) on (32, h, w) features,
    on one thread: (4, h, w) offsets and (h, w) face probabilities.

    One thread makes the result a function of the features alone: oneDNN splits a 1x1
    convolution's sums differently for other thread counts, and ATen's softmax takes a SIMD path
    for most elements and a scalar one for each thread's remainder. The head is ~5 % of P-net's
    work, so one thread costs little (measured: 0.5 ms for a 250 px photo, faster than two
    threads on a busy machine). Changing torch's thread count is cheap with OpenMP.
    """
    if x.device.type != "cpu":
        return pnet.conv4_2(x[None])[0], pnet.softmax4_1(pnet.conv4_1(x[None]))[0, 1]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reg = pnet.conv4_2(x[None])[0]
        prob = pnet.softmax4_1(pnet.conv4_1(x[None]))[0, 1]
    finally:
        torch.set_num_threads(old)
    return reg, prob
