"""Procedural chest-radiograph phantoms: the built-in, download-free dataset.

The demo and the tests need labelled chest X-rays with known lesion locations (so Grad-CAM can be
scored) and clinics that differ the way real scanners do. Everything is drawn with vectorised
numpy in normalised coordinates, so every size from 28 to 512 px shows the same anatomy.

Randomness comes from independent streams (labels, anatomy, lesions, pixel noise) seeded from
`seed`: the same arguments give identical bytes, and changing only the class balance keeps every
image's anatomy and noise, so tests can compare a lesion against the same chest without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from hxr_model.errors import DataError

PHANTOM_CLASSES: tuple[str, ...] = (
    "normal",
    "bacterial_pneumonia",
    "viral_pneumonia",
    "covid19",
    "tuberculosis",
    "emphysema",
)
NORMAL, BACTERIAL, VIRAL, COVID, TUBERCULOSIS, EMPHYSEMA = range(len(PHANTOM_CLASSES))
MIN_IMAGE_SIZE = 28
MAX_IMAGE_SIZE = 512

# 5 x 7 bitmaps of the letters scanners burn into radiographs (side and projection markers).
_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
}
_MARKER_TEXTS = ("L", "R", "PA", "AP")

_STREAM_LABELS, _STREAM_ANATOMY, _STREAM_LESION, _STREAM_NOISE = range(4)
# Images rendered together: enough to amortise numpy call overhead, few enough to stay in cache.
_CHUNK_PIXELS = 1 << 18
_LUT_LEVELS = 4096
_NODULES = 7


@dataclass(frozen=True)
class ScannerStyle:
    """How one clinic's scanner and export pipeline render the same chest.

    `blur` (a Gaussian sigma) and `marker_size` (glyph height) are fractions of the image side, so
    a style looks the same at every resolution. `zoom` > 1 frames the chest tighter; `offset`
    moves the field of view (fractions of the half-width); `heel` tilts the exposure left-right.
    """

    contrast: float = 1.0
    brightness: float = 0.0
    gamma: float = 1.0
    noise: float = 0.015
    blur: float = 0.0
    zoom: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)
    heel: float = 0.0
    marker_text: str = ""
    marker_corner: int = 0
    marker_strength: float = 0.0
    marker_size: float = 0.07

    def __post_init__(self) -> None:
        if min(self.contrast, self.gamma, self.zoom) <= 0:
            raise ValueError("scanner style contrast, gamma and zoom must be positive")
        if min(self.noise, self.blur, self.marker_strength, self.marker_size) < 0:
            raise ValueError("scanner style noise, blur and marker strength/size must be >= 0")
        if self.marker_corner not in range(4):
            raise ValueError(f"scanner style marker_corner must be 0-3, got {self.marker_corner}")
        if set(self.marker_text) - set(_GLYPHS):
            raise ValueError(f"marker_text may only use {''.join(_GLYPHS)}: {self.marker_text!r}")


def site_style(site_index: int, seed: int = 0) -> ScannerStyle:
    """Scanner style of virtual clinic `site_index`; site 0 is the neutral reference.

    Every other site moves brightness and gamma the same way (so its mean grey level always
    shifts), changes contrast, adds noise and blur, reframes the chest and usually burns in a
    marker: the shifts real clinics show and federated models must cope with.
    """
    if site_index < 0:
        raise ValueError(f"site_index must not be negative, got {site_index}")
    if site_index == 0:
        return ScannerStyle()
    rng = np.random.default_rng([seed, site_index])
    lighter, steeper = rng.choice((-1.0, 1.0), size=2)
    marker = bool(rng.random() < 0.8)
    return ScannerStyle(
        contrast=float(np.exp(steeper * rng.uniform(0.12, 0.3))),
        brightness=float(lighter * rng.uniform(0.03, 0.08)),
        gamma=float(np.exp(-lighter * rng.uniform(0.1, 0.3))),
        noise=float(rng.uniform(0.03, 0.07)),
        blur=float(rng.uniform(0.0, 0.006)),
        zoom=float(rng.uniform(0.9, 1.12)),
        offset=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
        heel=float(rng.uniform(-0.12, 0.12)),
        marker_text=str(rng.choice(_MARKER_TEXTS)) if marker else "",
        marker_corner=int(rng.integers(4)),
        marker_strength=float(rng.uniform(0.5, 1.0)) if marker else 0.0,
        marker_size=float(rng.uniform(0.05, 0.09)),
    )


@dataclass
class PhantomBatch:
    """Images uint8 [N,S,S], labels int64 [N] indexing PHANTOM_CLASSES, lesion masks bool
    [N,S,S] (all False for normal chests)."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def generate_phantoms(
    count: int,
    image_size: int,
    seed: int,
    style: ScannerStyle | None = None,
    class_balance: Sequence[float] | None = None,
) -> PhantomBatch:
    """Render `count` phantoms of `image_size` px whose classes follow `class_balance` (one weight
    per PHANTOM_CLASSES entry, default uniform) as exactly as whole images allow."""
    if count < 0 or seed < 0:
        raise DataError(f"synthetic phantom count and seed must not be negative: {count}, {seed}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DataError(
            f"synthetic phantom image size must be {MIN_IMAGE_SIZE}-{MAX_IMAGE_SIZE} px, "
            f"got {image_size}"
        )
    style = style or ScannerStyle()
    labels = _draw_labels(count, class_balance, np.random.default_rng([seed, _STREAM_LABELS]))
    images = np.empty((count, image_size, image_size), np.uint8)
    masks = np.empty((count, image_size, image_size), bool)
    anatomy_rng, lesion_rng, noise_rng = (
        np.random.default_rng([seed, stream])
        for stream in (_STREAM_ANATOMY, _STREAM_LESION, _STREAM_NOISE)
    )
    chunk = max(1, _CHUNK_PIXELS // image_size**2)
    for start in range(0, count, chunk):
        part = slice(start, min(start + chunk, count))
        chest = _draw_chest(labels[part], image_size, style, anatomy_rng, lesion_rng)
        density, masks[part] = _add_lesions(chest, labels[part])
        images[part] = _expose(density, _grain(noise_rng, density.shape), style)
    _burn_marker(images, style)
    return PhantomBatch(images=images, labels=labels, masks=masks)


def _draw_labels(
    count: int, class_balance: Sequence[float] | None, rng: np.random.Generator
) -> np.ndarray:
    """Largest-remainder class quotas, shuffled: even small batches match the balance."""
    classes = len(PHANTOM_CLASSES)
    weights = np.ones(classes) if class_balance is None else np.asarray(class_balance, float)
    if weights.shape != (classes,) or not np.all(weights >= 0) or weights.sum() <= 0:
        raise DataError(
            f"synthetic class balance needs {classes} non-negative weights "
            f"({', '.join(PHANTOM_CLASSES)}) with a positive sum, got {list(class_balance or [])}"
        )
    exact = weights / weights.sum() * count
    quotas = np.floor(exact).astype(np.int64)
    quotas[np.argsort(quotas - exact, kind="stable")[: count - quotas.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(classes, dtype=np.int64), quotas))


class _Params:
    """Per-image random parameters, drawn as uniforms and read as [n,1,1] float32 columns."""

    def __init__(self, uniforms: np.ndarray) -> None:
        self.uniforms = uniforms.astype(np.float32)

    def span(self, index: int, low: float, high: float) -> np.ndarray:
        return np.float32(low) + np.float32(high - low) * self.uniforms[:, index, None, None]

    def side(self, index: int) -> np.ndarray:
        """-1 (patient's right) or +1 (patient's left), each with probability one half."""
        return np.where(self.uniforms[:, index, None, None] < 0.5, np.float32(-1), np.float32(1))

    def __getitem__(self, rows: np.ndarray) -> _Params:
        return _Params(self.uniforms[rows])


def _soft(signed: np.ndarray, edge: float) -> np.ndarray:
    """Anti-aliased indicator of `signed` > 0, ramping over `edge` (in the units of `signed`)."""
    out = signed * np.float32(1.0 / edge)
    out += np.float32(0.5)
    return np.clip(out, 0.0, 1.0, out=out)


def _bands(phase: np.ndarray, width: float) -> np.ndarray:
    """Soft stripes `width` of a period wide, centred where `phase` is a whole number plus one
    half (ribs, vertebrae, vessels). Overwrites `phase`."""
    phase -= np.floor(phase)
    phase -= np.float32(0.5)
    return _soft(np.float32(width / 2) - np.abs(phase, out=phase), 0.08)


def _ridges(field: np.ndarray, sharpness: float) -> np.ndarray:
    """Thin curvy lines along the zero crossings of a smooth field (reticulation)."""
    out = np.abs(field)
    out *= np.float32(-sharpness)
    out += np.float32(1.0)
    return np.clip(out, 0.0, 1.0, out=out)


@lru_cache(maxsize=64)
def _bspline_matrix(size: int, cells: int) -> np.ndarray:
    """Cubic B-spline weights [size, cells] that turn a coarse random grid into a smooth field,
    scaled so that white-noise grids give fields of about unit standard deviation."""
    position = (np.arange(size) + 0.5) / size * (cells - 3) + 1.0
    t = np.abs(position[:, None] - np.arange(cells)[None, :])
    weights = np.where(t < 1, (4 - 6 * t**2 + 3 * t**3) / 6, np.where(t < 2, (2 - t) ** 3 / 6, 0))
    weights /= np.sqrt((weights**2).sum(axis=1)).mean()
    return weights.astype(np.float32)


def _smooth_field(grid: np.ndarray, size: int) -> np.ndarray:
    """Upsample [n, cells, cells] Gaussian grids to smooth [n, size, size] fields."""
    weights = _bspline_matrix(size, grid.shape[-1])
    return weights @ grid @ weights.T


def _anatomy_size(image_size: int) -> int:
    """Anatomy is smooth, so large even-sized images draw it at half resolution and upsample it
    (the main cost saving); lesions, noise and the detector always work at full resolution."""
    return image_size // 2 if image_size >= 96 and image_size % 2 == 0 else image_size


def _double_rows(images: np.ndarray) -> np.ndarray:
    """Bilinear 2x upsampling of axis 1 between pixel-centre grids: each new row is 3/4 of the
    nearest old row and 1/4 of the next nearest (edge rows repeat)."""
    n, rows, columns = images.shape
    out = np.empty((n, rows, 2, columns), np.float32)
    out[:, 1:, 0], out[:, 0, 0] = images[:, :-1], images[:, 0]
    out[:, :-1, 1], out[:, -1, 1] = images[:, 1:], images[:, -1]
    out *= np.float32(0.25)
    out += np.float32(0.75) * images[:, :, None]
    return out.reshape(n, 2 * rows, columns)


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    """Anatomy-resolution images to `size` px (equal, or twice the anatomy size)."""
    if images.shape[-1] == size:
        return images
    wide = _double_rows(images.transpose(0, 2, 1)).transpose(0, 2, 1)
    return _double_rows(np.ascontiguousarray(wide))


def _coordinates(anatomy: _Params, size: int, style: ScannerStyle) -> tuple[np.ndarray, np.ndarray]:
    """Anatomical x, y of every pixel: x > 0 is the patient's left (the image right), y grows
    downwards. The site's field of view comes first, then per-patient pose jitter."""
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1) / np.float32(style.zoom)
    angle = anatomy.span(0, -0.07, 0.07)
    scale = anatomy.span(1, 1.06, 1.2)
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    shift_x = np.float32(style.offset[0]) - anatomy.span(2, -0.05, 0.05)
    shift_y = np.float32(style.offset[1]) - anatomy.span(3, -0.02, 0.06)
    columns, rows = grid[None, None, :], grid[None, :, None]
    x = (cos * columns + cos * shift_x + sin * shift_y) + sin * rows
    y = (cos * rows + cos * shift_y - sin * shift_x) - sin * columns
    return x, y


@dataclass
class _Chest:
    """A chunk of chests drawn at anatomy resolution, with what lesions need to be placed.

    lx, ly are lung-local coordinates (each lung is the tapered ellipse lx² + ly² < 1, cut by
    the diaphragm and the heart); `lung` is how much of each pixel is aerated lung.
    """

    image_size: int
    style: ScannerStyle
    density: np.ndarray
    lung: np.ndarray
    lx: np.ndarray
    ly: np.ndarray
    anatomy: _Params
    lung_frame: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    lesion: _Params
    coarse: np.ndarray
    fine: np.ndarray


def _draw_chest(
    labels: np.ndarray,
    image_size: int,
    style: ScannerStyle,
    anatomy_rng: np.random.Generator,
    lesion_rng: np.random.Generator,
) -> _Chest:
    """Body, lungs, heart, diaphragm, ribs, clavicles, spine, trachea and vessels as density.

    Emphysema is drawn here as anatomy (larger, darker lungs, low flat domes, fewer vessels);
    the other lesions are added on top by `_add_lesions`.
    """
    n = len(labels)
    # Both streams draw the same amounts whatever the labels: anatomy never depends on them.
    anatomy = _Params(anatomy_rng.random((n, 27)))
    vessel_grid = anatomy_rng.standard_normal((n, 18, 18), dtype=np.float32)
    texture_grid = anatomy_rng.standard_normal((n, 9, 9), dtype=np.float32)
    lesion = _Params(lesion_rng.random((n, 4 + 5 * _NODULES)))
    coarse = lesion_rng.standard_normal((n, 7, 7), dtype=np.float32)
    fine = lesion_rng.standard_normal((n, 26, 26), dtype=np.float32)

    size = _anatomy_size(image_size)
    edge = 2.5 / size
    x, y = _coordinates(anatomy, size, style)
    ax = np.abs(x)
    ax2 = ax * ax
    inflation = (labels == EMPHYSEMA).astype(np.float32)[:, None, None] * lesion.span(0, 0.5, 1)

    # Torso: sloping shoulders, neck, flanks widening towards the abdomen; thickest mid-line.
    shoulder = anatomy.span(4, -0.84, -0.72) + np.float32(0.3) * ax2
    flank = anatomy.span(5, 0.82, 0.92) + np.float32(0.06) * y - ax
    body = _soft(np.maximum(np.minimum(flank, y - shoulder), np.float32(0.19) - ax), edge)
    density = body * (anatomy.span(6, 0.58, 0.68) - np.float32(0.25) * ax2)

    # Lungs: ellipses tapered to the apex, cut by the diaphragm domes and the heart.
    lung_cx = anatomy.span(7, 0.4, 0.46)
    lung_rx = anatomy.span(8, 0.27, 0.32) * (1 + np.float32(0.18) * inflation)
    lung_ry = anatomy.span(9, 0.56, 0.63) * (1 + np.float32(0.12) * inflation)
    lung_cy = anatomy.span(10, -0.04, 0.02) + np.float32(0.05) * inflation
    lateral = ax - lung_cx
    lx = lateral * (1 / lung_rx)
    ly = (y - lung_cy) * (1 / lung_ry)
    lx *= 1 - np.float32(0.45) * np.minimum(ly, 0)
    depth = 1 - lx * lx - ly * ly
    lung = _soft(depth * (lung_rx * np.float32(0.5)), edge)
    dome = anatomy.span(11, 0.33, 0.42) + np.float32(0.14) * inflation - y
    dome += (x > 0) * anatomy.span(12, 0.03, 0.08)  # the left dome sits lower
    lateral *= lateral
    dome += anatomy.span(13, 1.2, 2.0) * (1 - np.float32(0.75) * inflation) * lateral
    lung *= _soft(dome, edge)
    heart_x = (x - anatomy.span(14, 0.1, 0.16)) * (1 / anatomy.span(15, 0.28, 0.34))
    heart_y = (y - anatomy.span(16, 0.32, 0.4)) * (1 / anatomy.span(17, 0.26, 0.32))
    heart = 1 - heart_x * heart_x - heart_y * heart_y
    lung *= 1 - _soft(heart * np.float32(0.12), edge)

    # Bones: posterior ribs (arcs) and fainter anterior ribs, clavicles, spine.
    cage = np.clip((depth + np.float32(0.15)) * np.float32(3.0), 0, 1)
    cage *= body * (np.float32(0.3) + np.float32(0.7) * lung)
    rib_rate = 1 / anatomy.span(18, 0.15, 0.19)
    arc = anatomy.span(19, 0.35, 0.6) * (ax - np.float32(0.5)) ** 2 - np.float32(0.25) * ax
    ribs = _bands((y + arc) * rib_rate + anatomy.span(20, 0, 1), 0.32)
    ribs += np.float32(0.4) * _bands(
        (y + np.float32(0.45) * ax) * rib_rate + anatomy.span(21, 0, 1), 0.32
    )
    ribs *= cage
    clavicle = anatomy.span(22, -0.6, -0.52) - anatomy.span(23, 0.2, 0.35) * ax - y
    clavicle += np.float32(0.5) * (ax - np.float32(0.3)) ** 2
    clavicles = _soft(np.float32(0.03) - np.abs(clavicle), edge)
    clavicles *= np.clip((np.float32(0.66) - ax) * np.float32(12.0), 0, 1)
    clavicles *= np.clip((ax - np.float32(0.08)) * np.float32(12.0), 0, 1)
    clavicles *= body
    spine = _soft(np.float32(0.07) - ax, edge)
    spine *= np.float32(0.7) + np.float32(0.3) * _bands(y * np.float32(9.0), 0.7)
    trachea = _soft(np.float32(0.04) - ax, edge) * _soft(np.float32(-0.25) - y, edge)

    # Air is darkest where the lung is thickest. Vessels are rays fanning out of the hila,
    # broken into branches by a smooth random field, fading towards the periphery and sparse
    # when hyperinflated.
    hilum_y = y - lung_cy - np.float32(0.1)
    slope = hilum_y / (ax + np.float32(0.04))
    vessels = _bands(anatomy.span(24, 1.0, 1.4) * slope + anatomy.span(25, 0, 1), 0.3)
    vessels *= np.clip(_smooth_field(vessel_grid, size) + np.float32(0.6), 0, 1)
    hilum_y *= hilum_y
    hilum_y += ax2
    vessels *= np.clip(1 - hilum_y * np.float32(2.5), 0, 1)
    vessels *= anatomy.span(26, 0.12, 0.2) * (1 - np.float32(0.6) * inflation)
    aeration = np.float32(0.16) * np.clip(depth, 0, 1) - vessels
    aeration += np.float32(0.2) + np.float32(0.12) * inflation
    aeration *= lung

    density -= aeration
    density += np.float32(0.06) * ribs
    density += np.float32(0.1) * clavicles
    density += np.float32(0.05) * spine
    density -= np.float32(0.1) * trachea
    density += np.float32(0.03) * _smooth_field(texture_grid, size) + np.float32(0.05)
    frame = (lung_cx, lung_cy, lung_rx, lung_ry)
    return _Chest(image_size, style, density, lung, lx, ly, anatomy, frame, lesion, coarse, fine)


class _Lungs:
    """Full-resolution geometry of the chests that share one lesion class, computed on demand
    (each lesion kind needs a different part of it)."""

    def __init__(self, chest: _Chest, rows: np.ndarray) -> None:
        self._chest, self._rows = chest, rows
        self.size = chest.image_size
        self.anatomy = chest.anatomy[rows]
        self.centre_x, self.centre_y, self.radius_x, self.radius_y = (
            value[rows] for value in chest.lung_frame
        )
        self.lesion = chest.lesion[rows]
        self.coarse = chest.coarse[rows]
        self.fine = chest.fine[rows]

    @cached_property
    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        return _coordinates(self.anatomy, self.size, self._chest.style)

    @cached_property
    def lung(self) -> np.ndarray:
        return _upsample(self._chest.lung[self._rows], self.size)

    @cached_property
    def radial(self) -> np.ndarray:
        """lx² + ly²: 0 at the centre of each lung ellipse, 1 on its outline."""
        lx = _upsample(self._chest.lx[self._rows], self.size)
        lx *= lx
        ly = self.ly
        return lx + ly * ly

    @cached_property
    def ly(self) -> np.ndarray:
        return _upsample(self._chest.ly[self._rows], self.size)

    def smooth(self, grid: np.ndarray) -> np.ndarray:
        return _smooth_field(grid, self.size)


def _lobar_consolidation(lungs: _Lungs) -> np.ndarray:
    """Bacterial pneumonia: one dense, lobulated region in one lobe of one lung, centred in the
    lateral part of the lobe so the heart never hides it."""
    p = lungs.lesion
    x, y = lungs.xy
    side = p.side(1)
    lobe = np.floor(p.span(2, 0, 2.999))  # upper, middle (lingula on the left), lower
    centre_y = np.float32(-0.5) + np.float32(0.4) * lobe
    centre_x = side * (lungs.centre_x + p.span(3, 0.1, 0.5) * lungs.radius_x)
    centre_y = lungs.centre_y + centre_y * lungs.radius_y
    dx = (x - centre_x) * (1 / p.span(4, 0.19, 0.28))
    dy = (y - centre_y) * (1 / p.span(5, 0.2, 0.32))
    texture = np.clip(lungs.smooth(lungs.fine), -1, 1)
    spread = np.float32(0.5) * np.clip(lungs.smooth(lungs.coarse), -1, 1) + 1 - dx * dx - dy * dy
    spread += np.float32(0.25) * texture
    consolidation = np.clip(spread * np.float32(2.5), 0, 1)
    consolidation *= np.float32(0.85) + np.float32(0.15) * texture
    return consolidation * (side * x > 0)


def _interstitial_pattern(lungs: _Lungs) -> np.ndarray:
    """Viral pneumonia: a diffuse reticular net over both lungs, densest around the hila."""
    reach = lungs.lesion.span(1, 0.5, 0.9)
    extent = np.float32(0.3) * lungs.smooth(lungs.coarse) + 1 - lungs.radial / (reach * reach)
    net = np.float32(0.3) + np.float32(0.7) * _ridges(lungs.smooth(lungs.fine), 2.0)
    return np.clip(extent * np.float32(2.5), 0, 1) * net


def _peripheral_ground_glass(lungs: _Lungs) -> np.ndarray:
    """COVID-19: patchy haze at the periphery of both lower zones."""
    periphery = lungs.radial - lungs.lesion.span(1, 0.25, 0.45)
    lower = lungs.ly - lungs.lesion.span(2, -0.3, 0.1)
    patches = np.clip(np.float32(0.5) * lungs.smooth(lungs.coarse) + np.float32(0.85), 0.5, 1)
    patches *= np.clip(periphery * np.float32(6.0), 0, 1)
    return patches * np.clip(lower * np.float32(6.0), 0, 1)


def _upper_lobe_nodules(lungs: _Lungs) -> np.ndarray:
    """Tuberculosis: a few nodules in the upper zones, some hollowed into cavities."""
    p = lungs.lesion
    x, y = lungs.xy
    count = p.span(1, 3, _NODULES + 0.999)
    field = np.zeros_like(x)
    for k in range(_NODULES):
        column = 4 + 5 * k
        offset = p.span(column + 1, -0.5, 0.5) * lungs.radius_x
        centre_x = p.side(column) * (lungs.centre_x + offset)
        centre_y = lungs.centre_y + p.span(column + 2, -0.8, -0.2) * lungs.radius_y
        radius = p.span(column + 3, 0.04, 0.075)
        distance = (x - centre_x) ** 2 + (y - centre_y) ** 2
        distance *= 1 / (radius * radius)
        distance += (k >= count) * np.float32(10)  # absent nodules lie far away
        nodule = np.clip((1 - distance) * np.float32(3.0), 0, 1)
        hollow = (p.span(column + 4, 0, 1) < 0.5) * np.float32(0.8)
        nodule -= hollow * np.clip((np.float32(0.3) - distance) * np.float32(6.0), 0, 1)
        np.maximum(field, nodule, out=field)
    return field


_LESIONS: dict[int, Callable[[_Lungs], np.ndarray]] = {
    BACTERIAL: _lobar_consolidation,
    VIRAL: _interstitial_pattern,
    COVID: _peripheral_ground_glass,
    TUBERCULOSIS: _upper_lobe_nodules,
}
# Peak added density, from subtle to obvious, per lesion class.
_AMPLITUDE: dict[int, tuple[float, float]] = {
    BACTERIAL: (0.25, 0.5),
    VIRAL: (0.15, 0.3),
    COVID: (0.18, 0.32),
    TUBERCULOSIS: (0.22, 0.45),
}


def _add_lesions(chest: _Chest, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bring the chests to full resolution and draw each abnormal image's lesion inside its
    lungs; the mask is where the lesion was drawn (for emphysema: the over-inflated lungs)."""
    size = chest.image_size
    density = _upsample(chest.density, size)
    masks = np.zeros(density.shape, bool)
    emphysema = np.flatnonzero(labels == EMPHYSEMA)
    masks[emphysema] = _upsample(chest.lung[emphysema], size) > 0.5
    for label, draw in _LESIONS.items():
        rows = np.flatnonzero(labels == label)
        if rows.size == 0:
            continue
        lungs = _Lungs(chest, rows)
        field = draw(lungs)
        field *= lungs.lung
        density[rows] += lungs.lesion.span(0, *_AMPLITUDE[label]) * field
        masks[rows] = field > 0.2
    return density, masks


def _grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-mean, unit-variance detector noise: the sum of two uniform bytes is close enough to
    Gaussian and several times cheaper to draw."""
    pair = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), np.int8).reshape(2, *shape)
    noise = pair[0].astype(np.float32)
    noise += pair[1]
    noise *= np.float32(1.0 / np.sqrt(2 * (256**2 - 1) / 12))
    return noise


def _gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (a detector's point-spread function)."""
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(radius + 1) / sigma) ** 2)
    taps = (taps / (2 * taps.sum() - taps[0])).astype(np.float32)
    size = images.shape[-1]
    for axis in (1, 2):
        padding = [(0, 0)] * 3
        padding[axis] = (radius, radius)
        padded = np.pad(images, padding, mode="edge")
        window = [slice(None)] * 3
        images = images * taps[0]
        for offset in range(1, radius + 1):
            window[axis] = slice(radius - offset, radius - offset + size)
            pair = padded[tuple(window)].copy()
            window[axis] = slice(radius + offset, radius + offset + size)
            pair += padded[tuple(window)]
            pair *= taps[offset]
            images += pair
    return images


@lru_cache(maxsize=32)
def _display_lut(style: ScannerStyle) -> np.ndarray:
    """Contrast, brightness and gamma of the site's export pipeline as one lookup table."""
    level = np.linspace(0.0, 1.0, _LUT_LEVELS)
    level = np.clip((level - 0.5) * style.contrast + 0.5 + style.brightness, 0, 1) ** style.gamma
    return np.round(level * 255).astype(np.uint8)


def _expose(density: np.ndarray, noise: np.ndarray, style: ScannerStyle) -> np.ndarray:
    """Detector and export: heel effect, blur, noise, display curve, 8-bit quantisation."""
    size = density.shape[-1]
    if style.heel:
        density *= 1 + np.linspace(-style.heel, style.heel, size, dtype=np.float32)
    if style.blur * size >= 0.3:
        density = _gaussian_blur(density, style.blur * size)
    noise *= np.float32(style.noise)
    density += noise
    density *= np.float32(_LUT_LEVELS - 1)
    np.clip(density, 0, _LUT_LEVELS - 1, out=density)
    return np.take(_display_lut(style), density.astype(np.intp))


def _burn_marker(images: np.ndarray, style: ScannerStyle) -> None:
    """Burn the site's text marker into a corner of every image, as scanners do."""
    if not style.marker_text or style.marker_strength == 0 or len(images) == 0:
        return
    size = images.shape[-1]
    rows = [" ".join(_GLYPHS[letter][row] for letter in style.marker_text) for row in range(7)]
    bitmap = np.array([[pixel == "#" for pixel in row] for row in rows], np.float32)
    scale = max(1, round(style.marker_size * size / 7))
    alpha = np.kron(bitmap, np.ones((scale, scale), np.float32))[:size, :size]
    alpha *= np.float32(style.marker_strength)
    height, width = alpha.shape
    margin = round(0.04 * size)
    top = margin if style.marker_corner < 2 else size - margin - height
    left = margin if style.marker_corner % 2 == 0 else size - margin - width
    top, left = max(0, top), max(0, left)
    region = images[:, top : top + height, left : left + width]
    region[...] = np.round(region * (1 - alpha) + 255 * alpha)
