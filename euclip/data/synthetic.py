"""A built-in synthetic image-caption dataset: coloured shapes with a known taxonomy.

It lets a user train and compare embedding geometries on a laptop CPU in minutes, with no files and no downloads.
Each sample is a small RGB image (default 32x32) of one object, described by a caption whose *specificity* varies:

====== ======================= ===================================================================
level  what it names           example
====== ======================= ===================================================================
0      nothing specific        "a shape"
1      shape family            "a polygon"
2      leaf shape (or colour)  "a triangle" ("a red shape", see ``color_captions``)
3      colour + leaf shape     "a red triangle"
4      every attribute         "a small red triangle at the top left on a noisy dark background"
====== ======================= ===================================================================

so generic captions entail (are true of) many images and specific ones few: the partial order that hyperbolic
(MERU-style) and entailment-aware models are meant to capture.

Attributes: 15 leaf shapes in 3 families (:data:`SHAPE_FAMILIES`), 12 colours in 3 families
(:data:`COLOR_FAMILIES`), 2 sizes, 9 positions on a 3x3 grid (with jitter), and 4 noisy or graded backgrounds.
Some colour-shape combinations (:data:`HELDOUT_COMBINATIONS`) never occur in the ``train`` and ``test`` splits and
are the only ones in the ``heldout`` split, for compositional zero-shot tests.

Every sample is a pure function of ``(seed, split, index)``: a fresh ``numpy.random.default_rng([seed, split_code,
index])`` decides it, so the dataset is reproducible, has no end (any index >= 0 works) and is safe to read from any
number of DataLoader worker processes.
"""

from __future__ import annotations

import math
import operator
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from euclip.tree import Tree

__all__ = [
    "SHAPES", "SHAPE_FAMILIES", "SHAPE_TO_FAMILY", "SHAPE_SYNONYMS", "FAMILY_PHRASES", "GENERIC_NOUNS",
    "COLORS", "COLOR_FAMILIES", "COLOR_TO_FAMILY", "COLOR_SYNONYMS", "COLOR_RGB",
    "SIZES", "SIZE_SYNONYMS", "POSITIONS", "POSITION_PHRASES", "BACKGROUNDS", "BACKGROUND_PHRASES",
    "CAPTION_LEVELS", "LEVEL_PROBS", "FRAMES", "TEMPLATES", "HELDOUT_COMBINATIONS", "SPLITS",
    "Attributes", "SyntheticShapes", "check_color_captions", "check_level_probs", "shape_taxonomy", "color_taxonomy",
    "caption_pool", "benchmark",
]

# ----------------------------------------------------------------------------------------------------------------
# Taxonomy
# ----------------------------------------------------------------------------------------------------------------

SHAPE_FAMILIES: dict[str, tuple[str, ...]] = {
    "polygon": ("triangle", "square", "pentagon", "hexagon", "diamond", "rectangle"),
    "round": ("circle", "ellipse", "semicircle", "ring", "crescent"),
    "symbol": ("star", "cross", "arrow", "heart"),
}
"""Shape family -> its leaf shapes. Family ids are single words (they are tree node ids); see
:data:`FAMILY_PHRASES` for how captions name them."""

SHAPES: tuple[str, ...] = tuple(s for leaves in SHAPE_FAMILIES.values() for s in leaves)
"""Leaf shape class names, in family order; a shape label is an index into this tuple."""

SHAPE_TO_FAMILY: dict[str, str] = {s: f for f, leaves in SHAPE_FAMILIES.items() for s in leaves}

COLOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "warm": ("red", "orange", "yellow", "pink"),
    "cool": ("blue", "green", "purple", "cyan"),
    "neutral": ("white", "gray", "black", "brown"),
}
"""Colour family -> its colours."""

COLORS: tuple[str, ...] = tuple(c for members in COLOR_FAMILIES.values() for c in members)
"""Colour names, in family order; a colour label is an index into this tuple."""

COLOR_TO_FAMILY: dict[str, str] = {c: f for f, members in COLOR_FAMILIES.items() for c in members}

# Base sRGB of each colour (0-255). Chosen to be pairwise far apart (>= ~100 in RGB distance) so that the colour
# survives the per-sample jitter and stays nameable.
COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 220, 40), "pink": (240, 120, 185),
    "blue": (40, 80, 225), "green": (40, 170, 60), "purple": (140, 55, 195), "cyan": (40, 205, 215),
    "white": (238, 238, 238), "gray": (128, 128, 128), "black": (22, 22, 22), "brown": (125, 75, 30),
}

SIZES: tuple[str, ...] = ("small", "large")
# Object extent (bounding-box side / image side) per size class.
_SIZE_RANGE: dict[str, tuple[float, float]] = {"small": (0.40, 0.50), "large": (0.70, 0.85)}

POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
"""Positions on a 3x3 grid, row-major."""

BACKGROUNDS: tuple[str, ...] = ("dark noisy", "light noisy", "dark gradient", "light gradient")

# Grey-level ranges the background generators draw from; also used to decide which colours have enough contrast.
_DARK_RANGE = (10.0, 60.0)
_LIGHT_RANGE = (190.0, 245.0)
_MIN_CONTRAST = 95.0  # least RGB distance between an object colour and any grey level of an allowed background

CAPTION_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4)
LEVEL_PROBS: tuple[float, ...] = (0.05, 0.10, 0.70, 0.10, 0.05)
"""Default probability of each caption level: mostly the leaf shape alone (level 2), with enough generic captions
(levels 0-1) that every batch holds the "a shape" / "a polygon" end of the hierarchy.

Why so shape-heavy (measured on a 2-core CPU, tiny model, 400-450 steps x 128): a small contrastive model learns
first whichever attribute dominates the captions, and then picks up a second one only slowly. With a mix of
(0.05, 0.10, 0.25, 0.25, 0.35) colour won: colour zero-shot 99 %, shape zero-shot 7-21 % (chance 6.7 %). With 60 %
shape-only captions CLIP reached 99 % shape but MERU stayed at chance; with this mix shape zero-shot reached 98 %
(CLIP), 99 % (EuCLIP) and 53 % (MERU), while colour stays near chance. Pass ``level_probs`` (``euclip train
--synthetic-caption-levels``) to study other mixes. Colour-only captions (``color_captions``, ``euclip train
--synthetic-color-captions``) at any point of training show the same suppression: from the start (35 % of the
captions), colour 99.8 % and shapes 6-10 %; for the first 75 steps only, colour 98 % and shapes 9 % after 225 more
shape-heavy steps; from step 150 of 300 (the sweep's recipe), CLIP trades shapes for some colour (shape 33-88 %,
colour 9-26 % over three seeds) while EuCLIP keeps its shapes (97-99 %) and colour stays at chance."""

SPLITS: dict[str, int] = {"train": 0, "test": 1, "heldout": 2}
"""Split name -> the code mixed into the RNG seed (different codes = disjoint index streams)."""


def _held_out() -> frozenset[tuple[str, str]]:
    # One colour per shape: shape i gets colour 7*i mod 12. Since gcd(7, 12) = 1 the first 12 shapes get 12 distinct
    # colours, so every shape and every colour (hence every colour family) is held out once; the last 3 shapes reuse
    # colours, so no colour loses more than 2 of its 15 shapes and no shape more than 1 of its 12 colours.
    return frozenset((COLORS[(7 * i) % len(COLORS)], shape) for i, shape in enumerate(SHAPES))


HELDOUT_COMBINATIONS: frozenset[tuple[str, str]] = _held_out()
"""``(color, shape)`` pairs absent from ``train``/``test``; the ``heldout`` split draws only from these."""

# ----------------------------------------------------------------------------------------------------------------
# Caption vocabulary
# ----------------------------------------------------------------------------------------------------------------

GENERIC_NOUNS: tuple[str, ...] = ("shape", "object", "figure", "geometric shape", "geometric figure")
"""Level-0 nouns: true of every image."""

FAMILY_PHRASES: dict[str, tuple[str, ...]] = {
    "polygon": ("polygon", "polygonal shape", "straight-edged shape"),
    "round": ("round shape", "rounded shape", "curved shape"),
    "symbol": ("symbol", "sign", "icon"),
}
"""Level-1 nouns per shape family (the first is canonical)."""

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "triangle": ("triangle",), "square": ("square",), "pentagon": ("pentagon",), "hexagon": ("hexagon",),
    "diamond": ("diamond", "rhombus"), "rectangle": ("rectangle", "oblong"),
    "circle": ("circle", "disc"), "ellipse": ("ellipse", "oval"), "semicircle": ("semicircle", "half circle"),
    "ring": ("ring", "annulus"), "crescent": ("crescent", "crescent moon"),
    "star": ("star", "five-pointed star"), "cross": ("cross", "plus sign"), "arrow": ("arrow",),
    "heart": ("heart", "heart shape"),
}
"""Level-2 nouns per leaf shape (the first is canonical, i.e. the class name)."""

COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLORS} | {"gray": ("gray", "grey")}

SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("at the top left", "in the top left", "in the top left corner", "in the upper left corner"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("at the top right", "in the top right", "in the top right corner", "in the upper right corner"),
    "left": ("on the left", "at the left", "at the middle left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "at the middle right"),
    "bottom left": ("at the bottom left", "in the bottom left", "in the bottom left corner",
                    "in the lower left corner"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": ("at the bottom right", "in the bottom right", "in the bottom right corner",
                     "in the lower right corner"),
}

BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "dark noisy": ("on a noisy dark background", "on a dark noisy background", "against a dark, noisy background",
                   "on dark noise"),
    "light noisy": ("on a noisy light background", "on a light noisy background",
                    "against a light, noisy background", "on light noise"),
    "dark gradient": ("on a dark gradient background", "on a dark gradient", "against a dark shaded background",
                      "on a dark gradient backdrop"),
    "light gradient": ("on a light gradient background", "on a light gradient", "against a light shaded background",
                       "on a light gradient backdrop"),
}

FRAMES: tuple[str, ...] = (
    "{}", "{}.", "a picture of {}.", "an image of {}.", "a drawing of {}.", "a photo of {}.", "a rendering of {}.",
    "this is {}.", "there is {}.", "{} is shown.", "an illustration of {}.", "a synthetic image of {}.",
)
"""Sentence frames of training captions; ``{}`` takes a noun phrase with its article."""

TEMPLATES: tuple[str, ...] = (
    "the {}.", "a picture of the {}.", "an image of the {}.", "a drawing of the {}.", "a photo of the {}.",
    "a rendering of the {}.", "this is the {}.", "an illustration of the {}.", "a synthetic image of the {}.",
    "the {} is shown.",
)
"""Zero-shot prompt templates (``template.format(class_name)``). Each is a training frame with the article "the",
so prompts are in-distribution captions, and "the" reads correctly before any noun ("a ellipse" would not)."""

_ARTICLES = (("a", 0.60), ("the", 0.25), ("", 0.15))  # "a" becomes "an" before a vowel


# ----------------------------------------------------------------------------------------------------------------
# Public dataclass and taxonomy trees
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attributes:
    """What one sample shows and how specific its caption is.

    Attributes:
        shape: leaf shape name (in :data:`SHAPES`).
        family: shape family (a key of :data:`SHAPE_FAMILIES`).
        color: colour name (in :data:`COLORS`).
        color_family: colour family (a key of :data:`COLOR_FAMILIES`).
        size: "small" or "large".
        position: one of :data:`POSITIONS`.
        background: one of :data:`BACKGROUNDS`.
        caption_level: 0 (generic) .. 4 (every attribute), see the module docstring.
    """

    shape: str
    family: str
    color: str
    color_family: str
    size: str
    position: str
    background: str
    caption_level: int


def shape_taxonomy() -> Tree:
    """The shape tree: root ``"shape"`` -> families (``"polygon"``, ``"round"``, ``"symbol"``) -> leaf shapes.

    Node ids are the names used everywhere in this module; ``tree.names`` gives each node the canonical caption
    noun (e.g. ``"round"`` -> ``"round shape"``). Leaves are in :data:`SHAPES` order; every leaf has depth 2.
    """
    edges = [("shape", f) for f in SHAPE_FAMILIES] + [(f, s) for f, leaves in SHAPE_FAMILIES.items() for s in leaves]
    return Tree(edges, names={f: FAMILY_PHRASES[f][0] for f in SHAPE_FAMILIES})


def color_taxonomy() -> Tree:
    """The colour tree: root ``"color"`` -> families (``"warm"``, ``"cool"``, ``"neutral"``) -> colours."""
    edges = [("color", f) for f in COLOR_FAMILIES] + [(f, c) for f, cs in COLOR_FAMILIES.items() for c in cs]
    return Tree(edges, names={f: f"{f} color" for f in COLOR_FAMILIES})


# ----------------------------------------------------------------------------------------------------------------
# Colour/background contrast
# ----------------------------------------------------------------------------------------------------------------


def _min_distance_to_greys(rgb: tuple[int, int, int], lo: float, hi: float) -> float:
    # Distance from a colour to the nearest grey (g, g, g) with lo <= g <= hi: the worst case over a background's range.
    greys = np.linspace(lo, hi, 64)[:, None]
    return float(np.min(np.linalg.norm(np.asarray(rgb, dtype=np.float64)[None, :] - greys, axis=1)))


def _compatible_backgrounds() -> dict[str, tuple[str, ...]]:
    # Black on dark noise or white on light noise would be invisible, so each colour is only drawn on backgrounds whose
    # whole grey range keeps it at least _MIN_CONTRAST away.
    out = {}
    for color, rgb in COLOR_RGB.items():
        dark_ok = _min_distance_to_greys(rgb, *_DARK_RANGE) >= _MIN_CONTRAST
        light_ok = _min_distance_to_greys(rgb, *_LIGHT_RANGE) >= _MIN_CONTRAST
        allowed = tuple(b for b in BACKGROUNDS if (dark_ok and b.startswith("dark")) or (light_ok and
                                                                                        b.startswith("light")))
        if not allowed:
            raise AssertionError(f"colour {color!r} has no background with enough contrast")
        out[color] = allowed
    return out


_BACKGROUNDS_FOR: dict[str, tuple[str, ...]] = _compatible_backgrounds()

# ----------------------------------------------------------------------------------------------------------------
# Shape geometry: polygons in a unit box [-1, 1]^2 (y down, as in image coordinates)
# ----------------------------------------------------------------------------------------------------------------


def _regular(n: int, radius: float = 1.0, phase: float = -math.pi / 2) -> np.ndarray:
    t = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)


def _ellipse(rx: float, ry: float, cx: float = 0.0, cy: float = 0.0, n: int = 48) -> np.ndarray:
    t = 2 * math.pi * np.arange(n) / n
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    t = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart(n: int = 60) -> np.ndarray:
    t = 2 * math.pi * np.arange(n) / n
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], axis=1)
    pts -= (pts.max(0) + pts.min(0)) / 2
    return pts / np.abs(pts).max()


def _unit_shapes() -> dict[str, list[tuple[np.ndarray, int]]]:
    # Each shape is a list of (polygon, fill) layers drawn in order; fill 0 cuts a hole (ring, crescent). Extents are
    # roughly [-1, 1] so the size classes mean the same for every shape. Proportions are exaggerated a little
    # (rectangle 2:1, ellipse ~1.8:1, thick ring) because at 32 px subtle differences disappear.
    s = 0.82
    return {
        "triangle": [(np.array([[0.0, -1.0], [1.0, 0.8], [-1.0, 0.8]]), 255)],
        "square": [(np.array([[-s, -s], [s, -s], [s, s], [-s, s]]), 255)],
        "pentagon": [(_regular(5) + np.array([0.0, 0.1]), 255)],
        "hexagon": [(_regular(6, phase=0.0), 255)],
        "diamond": [(np.array([[0.0, -1.0], [0.68, 0.0], [0.0, 1.0], [-0.68, 0.0]]), 255)],
        "rectangle": [(np.array([[-1.0, -0.5], [1.0, -0.5], [1.0, 0.5], [-1.0, 0.5]]), 255)],
        "circle": [(_ellipse(0.92, 0.92), 255)],
        "ellipse": [(_ellipse(1.0, 0.55), 255)],
        "semicircle": [(np.concatenate([_ellipse(1.0, 1.0, cy=0.5, n=64)[32:], [[1.0, 0.5]]]), 255)],
        "ring": [(_ellipse(0.95, 0.95), 255), (_ellipse(0.52, 0.52), 0)],
        "crescent": [(_ellipse(0.95, 0.95), 255), (_ellipse(0.8, 0.8, cx=0.5, cy=-0.15), 0)],
        "star": [(_star() + np.array([0.0, 0.1]), 255)],
        "cross": [(np.array([[-0.3, -1.0], [0.3, -1.0], [0.3, -0.3], [1.0, -0.3], [1.0, 0.3], [0.3, 0.3],
                             [0.3, 1.0], [-0.3, 1.0], [-0.3, 0.3], [-1.0, 0.3], [-1.0, -0.3], [-0.3, -0.3]]), 255)],
        "arrow": [(np.array([[-1.0, -0.22], [0.1, -0.22], [0.1, -0.72], [1.0, 0.0], [0.1, 0.72], [0.1, 0.22],
                             [-1.0, 0.22]]), 255)],
        "heart": [(_heart(), 255)],
    }


_UNIT_SHAPES = _unit_shapes()
_SUPERSAMPLE = 4  # draw the mask at 4x and box-downsample: anti-aliased edges keep small shapes recognisable
_MAX_TILT = math.radians(10)  # small enough that a square never looks like a diamond (45 degrees)

# ----------------------------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------------------------


def _article(word: str, rnd: random.Random) -> str:
    r = rnd.random()
    acc = 0.0
    for art, p in _ARTICLES:
        acc += p
        if r < acc:
            break
    if art == "a" and word[:1] in "aeiou":
        art = "an"
    return f"{art} {word}" if art else word


def _noun_phrase(attrs: Attributes, level: int, rnd: random.Random, color_caption: float = 0.0) -> str:
    # Returns the noun phrase without article; attribute order varies only where English allows it (size before colour
    # in front of the noun; position and background phrases after it in either order).
    if level == 0:
        return rnd.choice(GENERIC_NOUNS)
    if level == 1:
        return rnd.choice(FAMILY_PHRASES[attrs.family])
    # Drawn only when asked for, so that the default captions stay what they always were.
    if level == 2 and color_caption and rnd.random() < color_caption:
        return f"{rnd.choice(COLOR_SYNONYMS[attrs.color])} {rnd.choice(GENERIC_NOUNS)}"
    shape = rnd.choice(SHAPE_SYNONYMS[attrs.shape])
    if level == 2:
        return shape
    color = rnd.choice(COLOR_SYNONYMS[attrs.color])
    form = rnd.random()
    if level == 3:
        if form < 0.75:
            return f"{color} {shape}"
        return f"{shape} in {color}" if form < 0.9 else f"{color}-colored {shape}"
    size = rnd.choice(SIZE_SYNONYMS[attrs.size])
    head = f"{size} {color} {shape}" if form < 0.8 else f"{size} {shape} in {color}"
    post = [rnd.choice(POSITION_PHRASES[attrs.position]), rnd.choice(BACKGROUND_PHRASES[attrs.background])]
    rnd.shuffle(post)
    return " ".join([head, *post])


def _caption(attrs: Attributes, rnd: random.Random, color_caption: float = 0.0) -> str:
    phrase = _article(_noun_phrase(attrs, attrs.caption_level, rnd, color_caption), rnd)
    return rnd.choice(FRAMES).format(phrase)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def caption_pool() -> list[tuple[str, int, str]]:
    """Canonical captions of every taxonomy node, for retrieval and root-to-leaf traversal experiments.

    Returns:
        ``(caption, level, node)`` triples, one per distinct caption, with ``node`` the node of
        :func:`shape_taxonomy` the caption names: level 0 ``("a shape", 0, "shape")``; level 1 every family noun
        (``"a polygon"``, ``"a rounded shape"``, ...); level 2 every leaf noun and synonym (``"a triangle"``,
        ``"a rhombus"``, ...); level 3 every colour with each leaf's canonical noun (``"a red triangle"``, node
        ``"triangle"``); level 4 every colour, leaf, size and allowed background at the centre (``"a small red
        triangle in the center on a noisy dark background"``, node ``"triangle"``). Held-out combinations are
        included: they are valid descriptions, only absent from training images.
    """
    pool: list[tuple[str, int, str]] = [(_with_article(n), 0, "shape") for n in GENERIC_NOUNS]
    pool += [(_with_article(p), 1, f) for f in SHAPE_FAMILIES for p in FAMILY_PHRASES[f]]
    pool += [(_with_article(p), 2, s) for s in SHAPES for p in SHAPE_SYNONYMS[s]]
    pool += [(_with_article(f"{c} {s}"), 3, s) for s in SHAPES for c in COLORS]
    pool += [(_with_article(f"{size} {c} {s} {POSITION_PHRASES['center'][0]} {BACKGROUND_PHRASES[b][0]}"), 4, s)
             for s in SHAPES for c in COLORS for size in SIZES for b in _BACKGROUNDS_FOR[c]]
    return pool


# ----------------------------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------------------------


def _pick(u: float, n: int) -> int:
    # Map a uniform [0, 1) draw to one of n choices (min() guards the u -> 1.0 rounding edge).
    return min(int(u * n), n - 1)


def check_level_probs(level_probs: Sequence[float]) -> tuple[float, ...]:
    """Validate caption-level frequencies (one per level of :data:`CAPTION_LEVELS`) and normalise them to sum 1.

    Raises:
        ValueError: not one finite, non-negative number per level, or all zero.
    """
    probs = tuple(float(p) for p in level_probs)
    if len(probs) != len(CAPTION_LEVELS) or not all(math.isfinite(p) and p >= 0 for p in probs) or sum(probs) <= 0:
        raise ValueError(f"caption level frequencies must be {len(CAPTION_LEVELS)} non-negative numbers (levels "
                         f"{', '.join(map(str, CAPTION_LEVELS))}) with a positive sum, got {list(level_probs)}")
    total = sum(probs)
    return tuple(p / total for p in probs)


def check_color_captions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Validate per-epoch fractions of colour-only captions (see :class:`SyntheticShapes`): one or more numbers in
    [0, 1].

    Raises:
        ValueError: empty, or a value that is not a number in [0, 1].
    """
    values = tuple(float(f) for f in fractions)
    if not values or not all(0.0 <= f <= 1.0 for f in values):  # NaN fails both comparisons
        raise ValueError(f"colour-caption fractions must be one or more numbers in [0, 1] (one per epoch, the last "
                         f"for every later epoch), got {list(fractions)}")
    return values


class SyntheticShapes(torch.utils.data.Dataset):
    """Rendered coloured shapes with multi-level captions; see the module docstring.

    Args:
        split: ``"train"``, ``"test"`` (both draw from the non-held-out colour-shape combinations, from different
            index streams) or ``"heldout"`` (only :data:`HELDOUT_COMBINATIONS`).
        size: samples per epoch (``len(dataset)``); any index >= 0 is valid, indices past ``size`` continue the
            stream.
        seed: non-negative integer; each ``(seed, split, index)`` fixes one sample.
        image_size: side of the square images in pixels.
        transform: optional callable applied to the PIL image in ``__getitem__`` instead of the default
            tensor conversion.
        level_probs: relative frequency of each caption level 0..4 (normalised here); default
            :data:`LEVEL_PROBS`.
        color_captions: per epoch (sample ``i`` is in epoch ``i // size``), the fraction of level-2 captions
            that name the object's colour instead of its shape (``"a red shape"`` for ``"a triangle"``); the last
            value holds for every later epoch. ``(0.0,)`` (the default): level 2 always names the shape. A
            schedule such as ``(0, 0.5)`` (the sweep's) teaches shapes first and colours second: a small model
            learns whichever attribute is easiest first (colour) and then barely learns the other (see
            :data:`LEVEL_PROBS`).

    Raises:
        ValueError: unknown split, ``size <= 0``, negative seed, ``image_size < 8``, ``level_probs`` not five
            non-negative numbers with a positive sum, or ``color_captions`` not numbers in [0, 1].
    """

    def __init__(self, split: str = "train", size: int = 10_000, seed: int = 0, image_size: int = 32,
                 transform: Callable[[Image.Image], Any] | None = None,
                 level_probs: Sequence[float] = LEVEL_PROBS, color_captions: Sequence[float] = (0.0,)):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {image_size}")
        self.level_probs = check_level_probs(level_probs)
        self._level_cdf = np.cumsum(self.level_probs)
        self.color_captions = check_color_captions(color_captions)
        self.split = split
        self.size = int(size)
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.transform = transform
        self._split_code = SPLITS[split]
        # Sorted so the combination <-> index mapping never depends on set iteration order.
        everything = [(c, s) for s in SHAPES for c in COLORS]
        if split == "heldout":
            self.combinations: list[tuple[str, str]] = sorted(HELDOUT_COMBINATIONS, key=everything.index)
        else:
            self.combinations = [cs for cs in everything if cs not in HELDOUT_COMBINATIONS]
        self._labels: tuple[torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.size

    # -- sampling ---------------------------------------------------------------------------------------------------

    def _draw(self, index: int) -> tuple[Attributes, int, np.random.Generator]:
        """Attributes, a caption seed, and the generator positioned for rendering, all from one seeded stream."""
        index = operator.index(index)
        if index < 0:
            raise IndexError(f"index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, self._split_code, index])
        u = rng.random(5)
        color, shape = self.combinations[_pick(u[0], len(self.combinations))]
        backgrounds = _BACKGROUNDS_FOR[color]
        attrs = Attributes(
            shape=shape, family=SHAPE_TO_FAMILY[shape], color=color, color_family=COLOR_TO_FAMILY[color],
            size=SIZES[_pick(u[1], len(SIZES))], position=POSITIONS[_pick(u[2], len(POSITIONS))],
            background=backgrounds[_pick(u[3], len(backgrounds))],
            caption_level=int(min(np.searchsorted(self._level_cdf, u[4], side="right"), len(CAPTION_LEVELS) - 1)),
        )
        caption_seed = int(rng.integers(0, 2**62))
        return attrs, caption_seed, rng

    def attributes(self, index: int) -> Attributes:
        """The attributes of sample ``index`` (cheap: no rendering)."""
        return self._draw(index)[0]

    def caption(self, index: int) -> str:
        """The caption of sample ``index`` (cheap: no rendering)."""
        attrs, caption_seed, _ = self._draw(index)
        color_caption = self.color_captions[min(index // self.size, len(self.color_captions) - 1)]
        return _caption(attrs, random.Random(caption_seed), color_caption)

    # -- rendering --------------------------------------------------------------------------------------------------

    def _background(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        n = self.image_size
        lo, hi = _DARK_RANGE if kind.startswith("dark") else _LIGHT_RANGE
        tint = rng.normal(0.0, 6.0, size=3).astype(np.float32)
        if kind.endswith("noisy"):
            # Flat grey + low-frequency "cloud" texture + per-pixel grain: the model has to find the object's edges
            # rather than threshold a clean background.
            level = rng.uniform(lo + 5, hi - 5)
            clouds = Image.fromarray(rng.normal(0.0, 10.0, size=(4, 4)).astype(np.float32), mode="F")
            clouds = np.asarray(clouds.resize((n, n), Image.BILINEAR), dtype=np.float32)
            grain = rng.normal(0.0, rng.uniform(5.0, 14.0), size=(n, n, 1)).astype(np.float32)
            bg = level + clouds[:, :, None] + grain
        else:
            # A linear ramp across the image in a random direction, from near one end of the grey range to near
            # the other (the range is narrow, so two uniform draws would often give an invisible ramp).
            a, b = rng.uniform(lo, lo + 15), rng.uniform(hi - 15, hi)
            angle = rng.uniform(0.0, 2 * math.pi)
            coords = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n - 1)
            t = math.cos(angle) * coords[None, :] + math.sin(angle) * coords[:, None]  # in [-0.71, 0.71]
            t = (t + 0.71) / 1.42
            bg = (a + (b - a) * t)[:, :, None] + rng.normal(0.0, 4.0, size=(n, n, 1)).astype(np.float32)
        return np.clip(bg + tint, lo - 10, hi + 10).astype(np.float32)

    def _mask(self, attrs: Attributes, rng: np.random.Generator) -> np.ndarray:
        """(H, W) float32 coverage in [0, 1] of the object, anti-aliased."""
        n = self.image_size
        u = rng.random(6)
        lo, hi = _SIZE_RANGE[attrs.size]
        half = (lo + (hi - lo) * u[0]) * n / 2  # half the object's extent, in pixels
        angle = (u[3] * 2 - 1) * _MAX_TILT
        if attrs.shape == "arrow":
            angle += math.pi / 2 * _pick(u[4], 4)  # arrows point in any of 4 directions
        aspect = 1.0 + (u[5] - 0.5) * 0.12  # mild stretch so no two samples share an exact outline
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        scale = np.array([half * aspect, half / aspect])
        layers = [((poly * scale) @ rot.T, fill) for poly, fill in _UNIT_SHAPES[attrs.shape]]
        # Place the *drawn* bounding box (after tilt and stretch) so the object is never cut by the image border:
        # grid column/row 0/1/2 -> fraction 0/0.5/1 of the free range, jittered. Large objects can barely move, which
        # is true of large objects in real photos too.
        lo_xy = np.min([pts.min(0) for pts, _ in layers], axis=0)
        hi_xy = np.max([pts.max(0) for pts, _ in layers], axis=0)
        margin = 0.5
        free = n - 2 * margin - (hi_xy - lo_xy)
        row, col = divmod(POSITIONS.index(attrs.position), 3)
        frac = np.clip(np.array([col, row]) / 2 + (u[1:3] - 0.5) * 0.2, 0.0, 1.0)
        # (An object too big to fit, possible only for tiny image sizes, is centred and cut evenly.)
        offset = np.where(free >= 0, margin - lo_xy + frac * free, n / 2 - (lo_xy + hi_xy) / 2)
        ss = _SUPERSAMPLE
        canvas = Image.new("L", (n * ss, n * ss), 0)
        draw = ImageDraw.Draw(canvas)
        for pts, fill in layers:
            draw.polygon(((pts + offset) * ss).ravel().tolist(), fill=fill)
        return np.asarray(canvas.reduce(ss), dtype=np.float32) / 255.0

    def _render_array(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) float32 object mask of sample ``index``."""
        attrs, _, rng = self._draw(index)
        mask = self._mask(attrs, rng)
        bg = self._background(attrs.background, rng)
        n = self.image_size
        color = np.asarray(COLOR_RGB[attrs.color], dtype=np.float32) + rng.normal(0.0, 10.0, size=3).astype(
            np.float32)
        obj = color + rng.normal(0.0, 5.0, size=(n, n, 1)).astype(np.float32)
        alpha = mask[:, :, None]
        img = bg * (1.0 - alpha) + obj * alpha
        return np.clip(img + 0.5, 0, 255).astype(np.uint8), mask

    def render(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (``image_size`` x ``image_size``)."""
        return Image.fromarray(self._render_array(index)[0], mode="RGB")

    def mask(self, index: int) -> np.ndarray:
        """The object's (H, W) float32 coverage in [0, 1] for sample ``index`` (1 = fully object)."""
        return self._render_array(index)[1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """``(image, caption)``: image is a (3, H, W) float32 tensor, ``(pixel / 255 - 0.5) / 0.5`` in [-1, 1]
        (or ``transform(PIL image)`` when a transform was given)."""
        array, _ = self._render_array(index)
        caption = self.caption(index)
        if self.transform is not None:
            return self.transform(Image.fromarray(array, mode="RGB")), caption
        image = torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return image.contiguous(), caption

    # -- labels -----------------------------------------------------------------------------------------------------

    def _compute_labels(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._labels is None:
            shape_idx = {s: i for i, s in enumerate(SHAPES)}
            color_idx = {c: i for i, c in enumerate(COLORS)}
            attrs = [self.attributes(i) for i in range(self.size)]
            self._labels = (torch.tensor([shape_idx[a.shape] for a in attrs], dtype=torch.long),
                            torch.tensor([color_idx[a.color] for a in attrs], dtype=torch.long))
        return self._labels

    def labels(self) -> torch.Tensor:
        """(size,) long tensor: index into :data:`SHAPES` of each sample's shape (no rendering; cached)."""
        return self._compute_labels()[0]

    def color_labels(self) -> torch.Tensor:
        """(size,) long tensor: index into :data:`COLORS` of each sample's colour (computed without rendering)."""
        return self._compute_labels()[1]


def benchmark(n: int = 2000, image_size: int = 32, seed: int = 0) -> float:
    """Measure ``SyntheticShapes.__getitem__`` throughput on one CPU thread.

    Args:
        n: number of samples to produce.
        image_size: image side in pixels.
        seed: dataset seed.

    Returns:
        Samples per second (image tensor + caption).
    """
    ds = SyntheticShapes("train", size=n, seed=seed, image_size=image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a DataLoader worker gets one core; measure what one core does
    try:
        ds[0]  # warm up imports and caches outside the timed loop
        start = time.perf_counter()
        for i in range(n):
            ds[i]
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)
    return n / elapsed
