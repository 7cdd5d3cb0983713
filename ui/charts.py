"""Chart helpers shared by pages. Big matrices become server-rendered images (a 262k-cell Altair rect
chart takes ~8 s to draw in Chromium, an image ~1 s); modest ones stay Altair for hover."""

from __future__ import annotations

import numpy as np
from PIL import Image

# Viridis sampled at 9 points (matplotlib's data); linear interpolation between them is indistinguishable
# at the sizes we draw.
_VIRIDIS = np.array([
    [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
    [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], dtype=np.float32)
# Diverging blue-white-red for signed values (weights), centred on 0.
_DIVERGING = np.array([[33, 102, 172], [146, 197, 222], [247, 247, 247], [244, 165, 130], [178, 24, 43]],
                      dtype=np.float32)


def _colormap(values01: np.ndarray, stops: np.ndarray) -> np.ndarray:
    x = np.clip(values01, 0.0, 1.0) * (len(stops) - 1)
    lo = np.floor(x).astype(int).clip(0, len(stops) - 2)
    frac = (x - lo)[..., None]
    return (stops[lo] * (1 - frac) + stops[lo + 1] * frac).astype(np.uint8)


def heatmap_image(matrix: np.ndarray, *, diverging: bool = False, scale: int = 1,
                  vmin: float | None = None, vmax: float | None = None) -> Image.Image:
    """A colour-mapped image of a 2-D array ([rows, cols] -> rows x cols pixels, times `scale`)."""
    m = np.asarray(matrix, dtype=np.float32)
    m = np.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)
    if diverging:
        bound = float(np.abs(m).max()) if vmax is None else vmax
        bound = bound or 1.0
        rgb = _colormap((m / bound + 1) / 2, _DIVERGING)
    else:
        lo = float(m.min()) if vmin is None else vmin
        hi = float(m.max()) if vmax is None else vmax
        rgb = _colormap((m - lo) / ((hi - lo) or 1.0), _VIRIDIS)
    img = Image.fromarray(rgb, mode="RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img
