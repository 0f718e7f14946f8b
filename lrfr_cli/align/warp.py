"""5-point similarity alignment onto the ArcFace template.

Training and test faces must be aligned identically (a mismatch costs tens of LFW points), so
every aligner in lrfr (``align``, SCface landmark lists in ``eval``) goes through
:func:`warp_face`.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import LrfrError
from ..registry import check_choice

# Left eye, right eye, nose tip, left mouth corner, right mouth corner (image coordinates, 112x112).
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template_for(size: int | tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Template points and output (width, height) for ``size``.

    ``112`` → the ArcFace template; ``(96, 112)`` (width, height) → the same template shifted
    8 px left (the SphereFace/CosFace crop); ``N`` → the 112 template scaled by N/112.
    """
    if isinstance(size, tuple):
        w, h = size
        if (w, h) == (96, 112):
            return ARCFACE_TEMPLATE - np.array([8.0, 0.0]), (96, 112)
        if w != h:
            raise LrfrError(f"--size {w}x{h}: supported are 112, 96x112 or a square size")
        size = w
    if size < 16:
        raise LrfrError(f"--size {size}: too small for alignment (use >= 16)")
    return ARCFACE_TEMPLATE * (size / 112.0), (size, size)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Umeyama (1991), without reflection. Returns the 2x3 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama needs two N x 2 point sets (N >= 2), got {src.shape} and {dst.shape}")
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, d, vt = np.linalg.svd(cov)
    s = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        s[1, 1] = -1
    r = u @ s @ vt
    var_s = (sc**2).sum() / n
    if var_s <= 0:
        raise ValueError("degenerate landmarks: all points coincide")
    scale = np.trace(np.diag(d) @ s) / var_s
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def apply_transform(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


BORDERS = {"reflect": cv2.BORDER_REFLECT, "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}
INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def template_with_margin(size: int | tuple[int, int] = 112, margin: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Template points for ``size`` shrunk about the crop centre so ``margin`` more output pixels
    of context show on each side (0 = the standard template; models trained on ArcFace crops
    expect 0)."""
    tpl, (w, h) = template_for(size)
    if margin:
        if margin < 0 or 2 * margin >= min(w, h):
            raise LrfrError(f"--margin {margin}: expected 0 <= margin < {min(w, h) / 2:g} output pixels")
        centre = np.array([w / 2.0, h / 2.0])
        tpl = centre + (tpl - centre) * (min(w, h) / (min(w, h) + 2.0 * margin))
    return tpl, (w, h)


def fit_error(m: np.ndarray, landmarks: np.ndarray, template: np.ndarray) -> float:
    """Mean distance (output pixels) between the landmarks mapped by ``m`` and the template: how
    far the face's geometry is from the template's after the best similarity (pose, expression,
    detector noise)."""
    return float(np.linalg.norm(apply_transform(m, landmarks) - template, axis=1).mean())


def warp_face(
    img: np.ndarray,
    landmarks: np.ndarray,
    size: int | tuple[int, int] = 112,
    *,
    margin: float = 0.0,
    border: str = "reflect",
    interpolation: str = "linear",
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` (HxWx3 uint8) so ``landmarks`` (5x2) land on the template.

    Returns the aligned face and the 2x3 transform. Bilinear sampling and a reflected border by
    default: that is how the shared ``celeba_subset`` training faces were made (OpenCV
    ``warpAffine``, reflect border), and test faces must be made the same way. ``replicate``
    and ``constant`` (black) borders are available for other conventions.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    tpl, (w, h) = template_with_margin(size, margin)
    m = umeyama(lm, tpl)
    check_choice(border, BORDERS, "border")
    check_choice(interpolation, INTERPOLATIONS, "interpolation")
    out = cv2.warpAffine(img, m, (w, h), flags=INTERPOLATIONS[interpolation], borderMode=BORDERS[border])
    return out, m


# What landmarks.csv records, and what `lrfr align` warps with: landmarks to 1/1000 px, the 2x3
# matrix to 6 decimals (translation to 1e-6 px; OpenCV's warp resolves 1/32 px).
LANDMARK_DECIMALS = 3
MATRIX_DECIMALS = 6


def recorded_alignment(landmarks: np.ndarray, size: int | tuple[int, int] = 112, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(landmarks, 2x3 matrix) as ``landmarks.csv`` records them; the matrix is the one to warp with.

    The detector's landmarks are rounded to :data:`LANDMARK_DECIMALS` first, the similarity is
    fitted to the rounded points and rounded to :data:`MATRIX_DECIMALS`. So the recorded matrix
    reproduces a face exactly (``warp_with_matrix(photo, matrix, size)``), refitting the recorded
    landmarks gives the recorded matrix, and float noise below the rounding step in the
    detector's output (another CPU's kernels) changes nothing unless it crosses a rounding edge.
    """
    lm = np.round(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), LANDMARK_DECIMALS)
    tpl, _ = template_with_margin(size, margin)
    return lm, np.round(umeyama(lm, tpl), MATRIX_DECIMALS) + 0.0  # + 0.0: no "-0.0" in the CSV


def warp_with_matrix(
    img: np.ndarray, m: np.ndarray, size: tuple[int, int], *, border: str = "reflect", interpolation: str = "linear"
) -> np.ndarray:
    """Warp with a given 2x3 matrix: a recorded alignment (:func:`recorded_alignment`), or a crop
    fallback that has no landmarks. Bilinear and reflected border by default, as :func:`warp_face`."""
    return cv2.warpAffine(img, m, size, flags=INTERPOLATIONS[interpolation], borderMode=BORDERS[border])
