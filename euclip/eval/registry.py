"""The registry of evaluations: one function per evaluation, registered once, read by everything else.

An evaluation is a function ``fn(ctx: EvalContext) -> dict`` (a JSON-able result) registered with
:func:`register_evaluation`, which also declares

* what data it needs (``requires``: ``captions``, ``labels``, ``attributes``; see :mod:`euclip.data.sources`),
  so that the runner skips it on data that cannot serve it;
* which :class:`EvalSettings` it reads (``settings``: they become its ``euclip eval NAME`` flags);
* its headline numbers (``metrics``: :class:`Metric` paths into the result), which become the columns of
  ``results.json``'s flat ``metrics``, of sweep tables, and the rows of the report's metrics table.

So a new metric is one function and one registration: it then appears in ``results.json``
(:func:`euclip.eval.runner.evaluate_run`), as ``euclip eval NAME``, in ``euclip eval all`` and in the report.
The built-in evaluations live in :data:`BUILTIN_MODULES` and register themselves when imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from euclip.data.sources import DataSpec
from euclip.options import option
from euclip.runs import RunDir

__all__ = ["EVALUATIONS", "EvalContext", "EvalSettings", "Evaluation", "Metric", "NotApplicable", "evaluations",
           "get_evaluation", "register_evaluation"]

BUILTIN_MODULES = ("euclip.eval.zeroshot", "euclip.eval.retrieval", "euclip.eval.hierarchy",
                   "euclip.eval.diagnostics", "euclip.eval.traverse")


class NotApplicable(ValueError):
    """Raised by an evaluation that cannot serve this data after all (hierarchy metrics without a taxonomy):
    skipped when the evaluations are chosen automatically, an error when asked for by name."""


@dataclass
class EvalSettings:
    """Settings of the built-in evaluations (each evaluation declares which it reads)."""

    classnames: str | None = option(None, metavar="FILE",
                                    help="zero-shot class names: a file (one per line in sorted-folder order, or "
                                         "'folder<TAB>name' lines), or 'imagenet' for OpenCLIP's ImageNet-1k names",
                                    default_text="the folder names; WordNet lemmas for wnid folders")
    templates: str | None = option(None, metavar="FILE",
                                   help="prompt templates: a file with one template containing {} per line, "
                                        "'openai' (OpenCLIP's 80 ImageNet templates) or 'simple'",
                                   default_text="the synthetic templates; openai for folders")
    tree: str | None = option(None, metavar="TREE",
                              help="class taxonomy: 'shapes' (the synthetic one), 'wordnet' (from wnid folder "
                                   "names) or a 'parent child' edges file",
                              default_text="shapes for synthetic data, wordnet for folders")
    ks: tuple[int, ...] = option((1, 5, 10), metavar="K,K,...", help="recall cut-offs")
    chunk: int = option(1024, help="block side of the retrieval score matrix (memory ~ chunk²)")
    index: str | None = option(None, metavar="FACTORY",
                               help="retrieve through FAISS indexes built with this factory string (Flat: exact, the "
                                    "same recalls in bounded memory at any N; IVF1024,Flat or HNSW32: approximate)",
                               default_text="no index: blockwise exact scores")
    index_params: str | None = option(None, metavar="PARAMS", help="FAISS search parameters, e.g. nprobe=16")
    min_radius: float | None = option(None, metavar="K", help="K of the entailment cones",
                                      default_text="the run's final K, or 0.1")
    traversal_images: int = option(100, metavar="N", help="synthetic images walked toward the root",
                                   flags=("--num-images", "--traversal-images"))
    traversal_steps: int = option(20, metavar="N", help="interpolation steps from an image to the root",
                                  flags=("--steps", "--traversal-steps"))
    traversal_examples: int = option(8, metavar="N", help="walks saved (and printed) as examples",
                                     flags=("--examples", "--traversal-examples"))

    def __post_init__(self):
        if self.templates is not None:
            from euclip.eval.folders import resolve_templates

            resolve_templates(self.templates)  # a missing file or a bad template, named before any work


@dataclass(frozen=True)
class Metric:
    """A headline number of an evaluation.

    Attributes:
        key: the column name (``results.json`` ``metrics`` holds ``"<evaluation>.<key>"``).
        label: the report's row label.
        path: keys into the evaluation's result, or a function of the result (``None`` when undefined).
        fmt: ``"pct"`` (a fraction shown as a percentage), ``"num"``, ``"int"`` or ``"str"``.
        higher_is_better: for comparisons (sweeps, claims); ``None`` when neither.
    """

    key: str
    label: str
    path: tuple[str, ...] | Callable[[dict], Any]
    fmt: str = "num"
    higher_is_better: bool | None = True

    def value(self, result: dict | None) -> Any:
        if result is None:
            return None
        if callable(self.path):
            return self.path(result)
        for k in self.path:
            if not isinstance(result, dict) or k not in result:
                return None
            result = result[k]
        return result


@dataclass(frozen=True)
class Evaluation:
    name: str
    fn: Callable[["EvalContext"], dict]
    title: str  # the report's section heading
    summary: str  # one line for `euclip eval --help`
    description: str  # paragraphs for `euclip eval NAME --help`
    requires: frozenset[str] = frozenset()
    settings: tuple[str, ...] = ()
    metrics: tuple[Metric, ...] = ()
    examples: tuple[str, ...] = ()
    details: Callable[[dict], list[str]] | None = None  # extra lines for the command's printed summary

    def applies_to(self, spec: DataSpec) -> bool:
        return self.requires <= spec.source.capabilities(spec)


EVALUATIONS: dict[str, Evaluation] = {}


def register_evaluation(name: str, *, title: str, summary: str, description: str = "",
                        requires: tuple[str, ...] = (), settings: tuple[str, ...] = (),
                        metrics: tuple[Metric, ...] = (), examples: tuple[str, ...] = (),
                        details: Callable[[dict], list[str]] | None = None):
    """Decorator: register ``fn(ctx) -> dict`` as the evaluation ``name`` (see the module docstring)."""
    known = {f for f in EvalSettings.__dataclass_fields__}
    unknown = set(settings) - known
    if unknown:
        raise ValueError(f"evaluation {name!r} reads unknown settings {sorted(unknown)}; known: {sorted(known)}")

    def decorator(fn: Callable[[EvalContext], dict]) -> Callable[[EvalContext], dict]:
        if name in EVALUATIONS:
            raise ValueError(f"an evaluation named {name!r} is already registered")
        EVALUATIONS[name] = Evaluation(name, fn, title, summary, description or summary, frozenset(requires),
                                       tuple(settings), tuple(metrics), tuple(examples), details)
        return fn

    return decorator


def evaluations() -> dict[str, Evaluation]:
    """Every registered evaluation: the built-in ones in :data:`BUILTIN_MODULES` order (whatever imported them
    first), then the others in registration order."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    rank = {m: i for i, m in enumerate(BUILTIN_MODULES)}
    ordered = sorted(EVALUATIONS.values(), key=lambda e: rank.get(e.fn.__module__, len(rank)))  # stable
    return {e.name: e for e in ordered}


def get_evaluation(name: str) -> Evaluation:
    registry = evaluations()
    if name not in registry:
        raise ValueError(f"unknown evaluation {name!r}; valid: {', '.join(registry)}")
    return registry[name]


@dataclass
class EvalContext:
    """What an evaluation gets: the model, the data, the settings, and a cache shared by the evaluations of one
    run (so that the images are embedded once, and hierarchy metrics reuse the zero-shot predictions).

    Attributes:
        model: a :class:`~euclip.model.GeometricCLIP` in eval mode.
        spec: the evaluation data.
        settings: evaluation settings.
        device: where the model is.
        progress: progress bars.
        run: the model's run directory (for its config: the final K of the cones), if known.
    """

    model: Any
    spec: DataSpec
    settings: EvalSettings = field(default_factory=EvalSettings)
    device: torch.device = torch.device("cpu")
    progress: bool = True
    run: RunDir | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def embeddings(self, spec: DataSpec | None = None):
        """:class:`~euclip.eval.embed.Embeddings` of ``spec`` (default: the context's data), computed once."""
        from euclip.eval.embed import embed

        spec = spec or self.spec
        return self.cached(("embeddings", repr(spec)),
                           lambda: embed(self.model, spec, self.device, self.progress, desc=f"embed {spec.tag}"))

    def with_split(self, split: str) -> DataSpec:
        """The context's synthetic data, other split."""
        return replace(self.spec, split=split)

    def cached(self, key, compute: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def min_radius(self) -> float:
        """K of the entailment cones: the setting, else the run's final K (``min_radius_final`` if scheduled)."""
        if self.settings.min_radius is not None:
            return self.settings.min_radius
        return self.run.final_min_radius() if self.run is not None else 0.1
