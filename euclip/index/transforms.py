"""Every geometry × logit as a standard FAISS metric: the vectors to index, the vectors to query with, and back.

A nearest-neighbour index ranks by an inner product (``"ip"``, larger = nearer) or a squared L2 distance (``"l2"``,
smaller = nearer). Each of euclip's nine logits is a monotone increasing function of one of those, evaluated on
suitably transformed vectors, so an exact FAISS index returns exactly the logit's ranking. With the inner product:

=============  ==========================================  ============================================================
geometry       logit (higher = nearer)                     indexed / query vectors; the FAISS score ``s`` → logit
=============  ==========================================  ============================================================
elliptic       ``cos``, ``−acos(cos)``, ``−acos(cos)²``     unit ``y`` / unit ``x``; ``s = cos``, and ``acos`` is
                                                           decreasing on ``[−1, 1]``, so ``−acos`` and ``−acos²``
                                                           (``acos >= 0``) increase with ``s``
euclidean      inner ``x·y``                               ``y`` / ``x``; the logit is ``s``
euclidean      ``−‖x−y‖``, ``−‖x−y‖²``                     (L2) ``y`` / ``x``; ``s = ‖x−y‖²``: ``−√s``, ``−s``
hyperbolic     ``⟨x,y⟩_L``, ``−d_L``, ``−d_L²``            ``(y_s, −y_t)`` / ``(x_s, x_t)`` (``D + 1`` dims);
                                                           ``s = ⟨x,y⟩_L``, then ``acosh`` as below
=============  ==========================================  ============================================================

Hyperbolic points are stored as their space components ``x_s`` (MERU's convention, as everywhere in euclip); the
time component is ``x_t = sqrt(1/c + ‖x_s‖²)`` on the hyperboloid of curvature ``−c``. The ordinary dot product of
the query ``(x_s, x_t)`` with the indexed ``(y_s, −y_t)`` is the Lorentzian inner product
``s = ⟨x, y⟩_L = x_s·y_s − x_t y_t <= −1/c``, and ``d_L = acosh(−c s) / √c`` *decreases* as ``s`` increases
(``acosh`` is increasing and ``−c s`` decreasing in ``s``), so ``⟨x, y⟩_L``, ``−d_L`` and ``−d_L²`` (``d_L >= 0``)
all increase with ``s``: the largest inner product is the nearest point for all three logits.

**Inner products as L2 distances.** Any inner-product search can also run as an L2 search, by the classic
reduction of maximum inner product search to nearest neighbours (Bachrach et al., 2014): with ``b`` the indexed
vector above and ``M >= max ‖b‖`` (the manifest's ``norm_bound``), index ``(b, sqrt(M² − ‖b‖²))`` and query with
``(a, 0)``; then every indexed vector has norm ``M`` and ``‖(a, 0) − (b, ·)‖² = ‖a‖² + M² − 2 a·b``, which for a
fixed query decreases exactly as ``a·b`` increases: ``a·b = (‖a‖² + M² − s) / 2`` (metric ``"l2"`` for the
euclidean ``inner`` and the hyperbolic logits; ``D + 1``, hyperbolic ``D + 2`` dimensions).

Which one suits an approximate index depends on how it is built (measured on clustered data of intrinsic
dimension 32; :func:`choose_metric`'s ``"auto"``):

* A graph index (HNSW) links indexed vectors by comparing them *with each other* under the metric. Under the inner
  product the hyperbolic ``(y_s, −y_t)`` compare as ``y_s·y'_s + y_t y'_t``, which is not the Lorentzian product
  and mostly rewards large norms: HNSW32 found 5-7 % of the exact top 10. Under the L2 reduction all indexed
  vectors lie on one sphere and the graph is built from ordinary distances there: 100 %. So ``"auto"`` takes
  ``"l2"`` for hyperbolic graph indexes.
* An inverted file (IVF) compares the *query* with cluster centroids. Under the L2 reduction every query ``(a, 0)``
  lies in the hemisphere opposite the data (``a·b = ⟨x, y⟩_L < 0``) and the centroids' varying norms mislead the
  choice of lists (30 % recall@10 on the benchmark's clustered data, whose radii vary independently of direction).
  Under the inner product the query picks lists by ``⟨x, m⟩_L`` with a centroid ``m``, but FAISS would file each
  indexed vector under the largest ``y_s·m_s + y_t |m_t|`` instead (36 % on the test suite's clustered data). So
  ``"auto"`` keeps ``"ip"`` and :func:`~euclip.index.search.build_index` builds hyperbolic inverted files itself:
  centroids projected onto the hyperboloid (Lorentzian centroids) and every point filed under its Lorentzian-nearest
  one, as queries look for it (99.6 % on the benchmark's data, >= 90 % on the tests'). ``Flat`` keeps ``"ip"`` too
  (no rounding from the ``M²`` offset).
* The Euclidean ``inner`` logit searched well either way (HNSW32: 100 % ``ip``, 97 % ``l2``): ``"auto"`` keeps
  ``"ip"``. The elliptic geometry needs no reduction (unit vectors: ``‖x − y‖² = 2 − 2 cos``) and the Euclidean
  distances are L2 already.

The conversion :meth:`GeometryTransform.to_logits` is the textbook one, evaluated in float64 from FAISS's float32
scores. For nearby hyperbolic points the float32 ``s`` has cancelled most of ``−c s − 1`` (see
:mod:`euclip.geometry.hyperbolic`), so :class:`~euclip.index.search.GeometryIndex` re-scores the candidates with
:func:`euclip.geometry.pairwise_logits` from the stored embeddings by default; the conversion serves when the
embeddings are not wanted (``exact_scores=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from euclip import geometry as geom

__all__ = ["METRICS", "GeometryTransform", "as_points", "choose_metric"]

METRICS: tuple[str, ...] = ("ip", "l2")
_CHUNK = 65536  # rows converted at a time in float64, so that memory stays O(N · D) float32


def as_points(x, dim: int | None = None, what: str = "embeddings") -> torch.Tensor:
    """``x`` (a tensor, an array or nested lists, ``(N, D)`` or one ``(D,)`` vector) as a ``(N, D)`` tensor.

    float64 stays float64, everything else becomes float32.

    Raises:
        ValueError: not 1-D/2-D, a dimension other than ``dim``, or non-finite values; each message names ``what``.
    """
    t = (x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).cpu()
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        raise ValueError(f"{what} must be a (N, D) matrix or one (D,) vector, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{what} must be floating-point numbers, got dtype {t.dtype}")
    if dim is not None and t.shape[1] != dim:
        raise ValueError(f"{what} have dimension {t.shape[1]}, but the index holds dimension {dim}")
    t = t.to(torch.float64 if t.dtype == torch.float64 else torch.float32)
    if t.numel() and not torch.isfinite(t).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return t


def _allowed_metrics(geometry: str, logit: str) -> tuple[str, ...]:
    if geometry == "euclidean" and logit != "inner":
        return ("l2",)
    return METRICS


def choose_metric(geometry: str, logit: str, metric: str = "auto", graph: bool = False) -> str:
    """The FAISS metric for a geometry × logit: ``metric`` if given, else ``"auto"``'s choice (module docstring).

    Args:
        graph: whether the index is a graph (HNSW) at its top level: ``"auto"`` then searches the hyperbolic
            geometry through the L2 reduction; every other index keeps the inner product.

    Raises:
        ValueError: an unknown metric, or one this geometry × logit cannot be searched with.
    """
    allowed = _allowed_metrics(geometry, logit)
    if metric == "auto":
        if geometry == "hyperbolic":
            return "l2" if graph else "ip"
        return allowed[0]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid: auto, {', '.join(METRICS)}")
    if metric not in allowed:
        raise ValueError(f"{geometry}/{logit} embeddings rank like {', '.join(allowed)} only, not {metric}")
    return metric


@dataclass(frozen=True)
class GeometryTransform:
    """The FAISS metric and vector transforms of one geometry × logit (see the module docstring).

    Attributes:
        geometry: ``"euclidean"``, ``"elliptic"`` or ``"hyperbolic"``.
        logit: ``"inner"``, ``"distance"`` or ``"squared"``.
        dim: ``D``, the dimension of the manifold points (hyperbolic: of the space components).
        curvature: ``c > 0`` (curvature ``−c``); used by the hyperbolic geometry only.
        metric: ``"ip"`` or ``"l2"`` (from :func:`choose_metric`).
        norm_bound: ``M`` of the inner-product-to-L2 reduction (:attr:`augmented` transforms only), from
            :meth:`with_norm_bound`.
    """

    geometry: str
    logit: str
    dim: int
    curvature: float = 1.0
    metric: str = "ip"
    norm_bound: float | None = None

    def __post_init__(self):
        geom.check_geometry(self.geometry)
        geom.check_logit(self.logit)
        if self.dim < 1:
            raise ValueError(f"the embedding dimension must be >= 1, got {self.dim}")
        if not (self.curvature > 0 and np.isfinite(self.curvature)):
            raise ValueError(f"curvature must be a positive number, got {self.curvature}")
        choose_metric(self.geometry, self.logit, self.metric)

    @property
    def augmented(self) -> bool:
        """Whether an inner product is searched as an L2 distance through the extra ``sqrt(M² − ‖b‖²)`` coordinate."""
        return self.metric == "l2" and (self.geometry == "hyperbolic" or self.logit == "inner") \
            and self.geometry != "elliptic"

    @property
    def faiss_metric(self) -> int:
        import faiss

        return faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT

    @property
    def index_dim(self) -> int:
        """Dimension of the vectors FAISS sees: ``D``, +1 for hyperbolic (the time component), +1 if augmented."""
        return self.dim + (self.geometry == "hyperbolic") + self.augmented

    def points(self, x, what: str = "embeddings") -> torch.Tensor:
        """Validated manifold points ``(N, D)`` float32; elliptic ones re-normalised onto the unit sphere.

        The re-normalisation makes the inner-product index rank by the cosine even for points that drifted off the
        sphere by rounding (or were passed un-normalised); the other geometries keep their points as they are.
        """
        t = as_points(x, self.dim, what)
        if self.geometry != "elliptic":
            return t.float()
        out = torch.empty(t.shape, dtype=torch.float32)
        for start in range(0, t.shape[0], _CHUNK):  # in float64, a chunk at a time (no (N, D) float64 copy)
            out[start:start + _CHUNK] = geom.project(t[start:start + _CHUNK].double(), "elliptic")
        return out

    def _ip_vectors(self, x: torch.Tensor, time_sign: float) -> torch.Tensor:
        """float64 ``(N, D or D + 1)`` vectors whose dot products are the searched inner products."""
        x64 = x.double()
        if self.geometry != "hyperbolic":
            return x64
        time = torch.sqrt(1 / self.curvature + (x64 * x64).sum(-1, keepdim=True))
        return torch.cat([x64, time_sign * time], dim=1)

    def with_norm_bound(self, points: torch.Tensor) -> GeometryTransform:
        """This transform with ``M`` = the largest norm of the indexed vectors of ``points`` (augmented only)."""
        if not self.augmented:
            return self
        largest = max((float((self._ip_vectors(points[s:s + _CHUNK], -1.0) ** 2).sum(-1).max())
                       for s in range(0, points.shape[0], _CHUNK)), default=0.0)
        return GeometryTransform(self.geometry, self.logit, self.dim, self.curvature, self.metric, largest ** 0.5)

    def database(self, y: torch.Tensor, dtype=np.float32) -> np.ndarray:
        """The vectors to add to the FAISS index for points ``y`` ``(N, D)`` (from :meth:`points`): ``(N, index_dim)``.

        Computed in float64 and returned as ``dtype`` (FAISS takes float32).

        Raises:
            ValueError: an augmented transform without ``norm_bound``, or a point beyond it (added later).
        """
        b = self._ip_vectors(y, -1.0)
        if self.augmented:
            if self.norm_bound is None:
                raise ValueError("this transform needs norm_bound (GeometryTransform.with_norm_bound)")
            squared = (b * b).sum(-1, keepdim=True)
            bound = self.norm_bound ** 2
            if squared.numel() and squared.max() > bound * (1 + 1e-6):
                raise ValueError(f"a point's indexed norm {float(squared.max().sqrt()):.6g} exceeds the index's norm "
                                 f"bound {self.norm_bound:.6g}")
            b = torch.cat([b, (bound - squared).clamp_min(0).sqrt()], dim=1)
        return np.ascontiguousarray(b.numpy().astype(dtype, copy=False))

    def queries(self, x: torch.Tensor, dtype=np.float32) -> np.ndarray:
        """The vectors to search with for points ``x`` ``(Q, D)`` (from :meth:`points`): ``(Q, index_dim)``."""
        a = self._ip_vectors(x, 1.0)
        if self.augmented:
            a = torch.cat([a, torch.zeros(a.shape[0], 1, dtype=a.dtype)], dim=1)
        return np.ascontiguousarray(a.numpy().astype(dtype, copy=False))

    def to_logits(self, scores: np.ndarray, x: torch.Tensor) -> np.ndarray:
        """FAISS scores ``(Q, k)`` for the queries ``x`` ``(Q, D)`` → the geometry's logits ``(Q, k)``, float64.

        Monotone increasing in nearness: the best FAISS result has the largest logit.
        """
        s = np.asarray(scores, dtype=np.float64)
        if self.augmented:  # s = ‖a‖² + M² − 2 a·b
            a = self._ip_vectors(x, 1.0)
            s = ((a * a).sum(-1, keepdim=True).numpy() + self.norm_bound ** 2 - s) / 2
        elif self.metric == "l2" and self.geometry == "elliptic":  # unit vectors: s = 2 − 2 cos
            s = 1 - s / 2
        if self.geometry == "elliptic":
            if self.logit == "inner":
                return s
            arc = np.arccos(np.clip(s, -1.0, 1.0))
            return -arc if self.logit == "distance" else -arc * arc
        if self.geometry == "euclidean":
            if self.logit == "inner":
                return s
            sq = np.maximum(s, 0.0)  # FAISS's expansion can round below 0 for coincident points
            return -np.sqrt(sq) if self.logit == "distance" else -sq
        if self.logit == "inner":
            return s
        c = self.curvature
        d = np.arccosh(np.maximum(-c * s, 1.0)) / np.sqrt(c)  # ⟨x, y⟩_L <= −1/c, up to rounding
        return -d if self.logit == "distance" else -d * d
