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


def place_labels(x: np.ndarray, y: np.ndarray, texts: list[str], width: float = 640, height: float = 400,
                 char_px: float = 6.6, line_px: float = 14, log: bool = False,
                 domain: tuple[tuple[float, float], tuple[float, float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where to write each point's label so that labels do not cover one another or the points: the
    left-middle anchor (x, y) of each label in data units, for mark_text(align="left", baseline="middle").

    Greedy, in the order given (put the important labels first): each label takes the first of eight spots
    around its point (right, left, above, below, then the diagonals) whose box, estimated from its length
    at `char_px` per character, is free; failing that, the spot it overlaps least. `width`/`height` are
    the plot area in pixels as drawn (labels overlap again on a much smaller screen); `log` for log axes;
    `domain` ((x lo, x hi), (y lo, y hi)) the axes' ranges when they reach beyond the points."""
    fx, fy = (np.log10(x), np.log10(y)) if log else (np.asarray(x, float), np.asarray(y, float))
    f = np.log10 if log else float

    def span(v, d):
        lo, hi = (float(f(d[0])), float(f(d[1]))) if d else (float(np.min(v)), float(np.max(v)))
        return lo, (hi - lo) or 1.0
    (x0, xs), (y0, ys) = span(fx, domain and domain[0]), span(fy, domain and domain[1])
    px, py = (fx - x0) / xs * width, (1 - (fy - y0) / ys) * height  # pixels, y down
    dots = [(a - 5, b - 5, a + 5, b + 5) for a, b in zip(px, py)]
    placed: list[tuple[float, float, float, float]] = []
    lx, ly = np.empty(len(px)), np.empty(len(px))

    def overlap(box, others):
        return sum(max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1]))
                   for o in others)
    for i, (a, b, text) in enumerate(zip(px, py, texts)):
        w, h = char_px * len(text) + 2, line_px
        # left edge and vertical centre of the label box for each spot around the point
        spots = [(a + 8, b), (a - 8 - w, b), (a - w / 2, b - 12), (a - w / 2, b + 12),
                 (a + 6, b - 11), (a + 6, b + 11), (a - 6 - w, b - 11), (a - 6 - w, b + 11)]
        boxes = [(sx, sy - h / 2, sx + w, sy + h / 2) for sx, sy in spots]
        costs = [overlap(box, placed) + overlap(box, dots[:i] + dots[i + 1:]) for box in boxes]
        best = int(np.argmin(costs)) if min(costs) > 0 else costs.index(0.0)
        placed.append(boxes[best])
        sx, sy = spots[best]
        lx[i], ly[i] = x0 + sx / width * xs, y0 + (1 - sy / height) * ys
    return (10 ** lx, 10 ** ly) if log else (lx, ly)
