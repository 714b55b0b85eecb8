"""The paper's design space as a grid of cells: geometry × logit × final LayerNorm × entailment × seed, plus axes
beyond the paper (embedding dimension, tower model, dataset size, steps).

A :class:`Cell` is one training run. Every cell of a sweep gets the same recipe (:data:`RECIPE`: steps, batch,
schedule, data) and paired seeds (same seed: same data order and same initial tower weights); the only per-cell
differences are what the paper varies, plus its documented initial logit scale per logit type (0 for squared
logits, −1 with the entailment loss, ln(1/0.07) otherwise; :func:`euclip.presets.default_init_logit_scale`).
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields

from euclip import geometry as geom

__all__ = ["AXES", "Cell", "GRIDS", "Grid", "QUICK_RECIPE", "RECIPE", "parse_set"]

# The sweep's default budget, the same for every cell (see docs/results.md for what it reaches). Two synthetic
# epochs of 19,200 samples (150 steps each): in the first, single-attribute captions name the shape; in the second,
# half of them name the colour instead ("a red shape"). Shapes first because a small model that meets the easy
# attribute (colour) first never learns the other in this budget (README, "Known limits"). With two cells at a
# time on a 2-core CPU (`--jobs auto`), the 9 headline runs took 25 min, so the 60 of the paper grid take ~2.8 h.
RECIPE: dict[str, object] = dict(
    model="tiny", steps=300, batch_size=128, lr=1e-3, warmup=30, wd=0.1, entailment_warmup=100,
    train_num_samples=19_200, synthetic_color_captions=(0.0, 0.5), workers=1, log_every_steps=25,
    save_every_steps=100, deterministic=True, progress=False,
)
EVAL_SAMPLES = 1000  # synthetic test (and held-out) images per cell's evaluation
# A few seconds per cell, for tests and a first look.
QUICK_RECIPE: dict[str, object] = dict(RECIPE, steps=6, batch_size=16, warmup=2, entailment_warmup=2, workers=0,
                                       log_every_steps=3, save_every_steps=3, train_num_samples=2_000)
QUICK_EVAL_SAMPLES = 48

ENTAILMENT = 0.2  # MERU's weight, the paper's "with entailment" value


@dataclass(frozen=True, order=True)
class Cell:
    """One run of a sweep. ``extra`` holds the axes beyond the paper that the sweep varies, as ``(name, value)``."""

    geometry: str
    logit: str
    final_ln: bool
    entailment: float
    seed: int
    extra: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        """The run directory's name: its settings, e.g. ``euclidean-squared_noln_ent0_s0``."""
        parts = [f"{self.geometry}-{self.logit}", "ln" if self.final_ln else "noln", f"ent{self.entailment:g}"]
        parts += [f"{k.replace('_', '')}{v}" for k, v in self.extra]
        return "_".join(parts + [f"s{self.seed}"])

    @property
    def setting(self) -> "Cell":
        """The cell without its seed: what its seeds are aggregated over."""
        return Cell(self.geometry, self.logit, self.final_ln, self.entailment, -1, self.extra)

    def describe(self) -> dict:
        """The cell's settings as a flat row (``extra`` axes as their own columns)."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d.update(dict(self.extra))
        return d

    def train_options(self, recipe: dict, sets: dict) -> dict:
        """The ``euclip train`` options of this cell: the recipe, ``--set`` values, then the cell's own settings."""
        options = {**recipe, **sets, **dict(self.extra)}
        options.update(geometry=self.geometry, logit=self.logit, final_ln=self.final_ln,
                       entailment_weight=self.entailment, seed=self.seed)
        return options


# Axes beyond the paper: sweep flag -> train option.
AXES = {"embed_dims": "embed_dim", "models": "model", "dataset_sizes": "train_num_samples", "steps": "steps"}


@dataclass
class Grid:
    """Values per axis; :meth:`cells` is their product, without the cells that cannot exist."""

    geometries: tuple[str, ...] = geom.GEOMETRIES
    logits: tuple[str, ...] = geom.LOGITS
    final_ln: tuple[bool, ...] = (True, False)
    entailment: tuple[float, ...] = (0.0, ENTAILMENT)
    seeds: tuple[int, ...] = (0, 1)
    extra: dict[str, tuple] = field(default_factory=dict)  # AXES value -> values
    cells_filter: tuple[tuple[str, str, bool, float], ...] | None = None  # only these (named grids)

    def __post_init__(self):
        for value in self.geometries:
            geom.check_geometry(value)
        for value in self.logits:
            geom.check_logit(value)
        for value in self.entailment:
            if value < 0:
                raise ValueError(f"--entailment values must be >= 0, got {value}")
        unknown = set(self.extra) - set(AXES.values())
        if unknown:
            raise ValueError(f"unknown sweep axes {sorted(unknown)}; valid: {', '.join(AXES.values())}")
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")

    def cells(self) -> list[Cell]:
        """Every valid cell; the entailment loss only where cones exist (euclidean, hyperbolic)."""
        extra_axes = [[(name, v) for v in values] for name, values in self.extra.items()]
        cells = []
        for g, lo, ln, ent in itertools.product(self.geometries, self.logits, self.final_ln, self.entailment):
            if ent > 0 and g not in geom.CONE_GEOMETRIES:
                continue
            if self.cells_filter is not None and (g, lo, ln, ent) not in self.cells_filter:
                continue
            for extra in itertools.product(*extra_axes):
                cells += [Cell(g, lo, ln, ent, seed, tuple(extra)) for seed in self.seeds]
        self._check_every_geometry_has_cells(cells)
        return cells

    def _check_every_geometry_has_cells(self, cells: list[Cell]) -> None:
        for g in self.geometries:
            if g not in geom.CONE_GEOMETRIES and all(e > 0 for e in self.entailment):
                raise ValueError(f"entailment {', '.join(f'{e:g}' for e in self.entailment)} requested on the {g} "
                                 f"geometry, which has no entailment cones (cone geometries: "
                                 f"{', '.join(geom.CONE_GEOMETRIES)}); add --entailment 0 or drop {g}")
        if not cells:
            raise ValueError("the grid has no valid cell: its geometries, logits, LayerNorm and entailment values "
                             "select none of the named grid's cells")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["extra"] = {k: list(v) for k, v in self.extra.items()}
        return {k: (list(map(list, v)) if k == "cells_filter" and v is not None else
                    list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, g: dict) -> "Grid":
        """The grid :meth:`to_dict` wrote (as JSON read it back: lists for tuples)."""
        return cls(geometries=tuple(g["geometries"]), logits=tuple(g["logits"]), final_ln=tuple(g["final_ln"]),
                   entailment=tuple(g["entailment"]), seeds=tuple(g["seeds"]),
                   extra={k: tuple(v) for k, v in g.get("extra", {}).items()},
                   cells_filter=tuple(tuple(c) for c in g["cells_filter"]) if g.get("cells_filter") else None)


HEADLINE = (("elliptic", "inner", True, 0.0), ("euclidean", "squared", False, 0.0),
            ("hyperbolic", "distance", True, ENTAILMENT))
GRIDS: dict[str, dict] = {
    "paper": {},  # every valid cell: 3 geometries × 3 logits × final LN on/off × entailment (cone geometries): 30
    "headline": {"cells_filter": HEADLINE, "geometries": ("elliptic", "euclidean", "hyperbolic")},  # CLIP, EuCLIP, MERU
}


def parse_set(items: list[str]) -> dict[str, object]:
    """``--set FLAG=VALUE`` items → train options (values parsed as the config's field types).

    Raises:
        ValueError: not ``FLAG=VALUE``, an unknown flag, or a flag the sweep itself varies.
    """
    from euclip.cli.flags import config_fields
    from euclip.train.config import TrainConfig

    types = {f.name: kind for f, kind in config_fields(TrainConfig)}
    varied = {"geometry", "logit", "final_ln", "entailment_weight", "seed", "preset"}
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected FLAG=VALUE, e.g. --set lr=0.002")
        key, value = item.split("=", 1)
        name = key.strip().lstrip("-").replace("-", "_")
        if name in varied:
            raise ValueError(f"--set {key}: the sweep varies {name} itself (use its axis flag)")
        if name not in types:
            raise ValueError(f"--set {key}: unknown train flag; see `euclip train --help`")
        out[name] = _parse_value(value.strip(), types[name], key)
    return out


def _parse_value(text: str, kind, key: str) -> object:
    import types as pytypes
    import typing

    args = [a for a in typing.get_args(kind) if a is not type(None)] if isinstance(kind, pytypes.UnionType) else [kind]
    base = args[0]
    try:
        if base is bool:
            if text.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "on", "1", "yes")
        if typing.get_origin(base) is tuple:
            return tuple(typing.get_args(base)[0](v) for v in text.split(","))
        return base(text)
    except ValueError:
        raise ValueError(f"--set {key}={text}: not a valid {getattr(base, '__name__', base)}") from None
