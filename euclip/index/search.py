"""Build and search a FAISS index over euclip embeddings of any geometry × logit, exactly or approximately.

:func:`build_index` turns manifold points into the vectors of :mod:`euclip.index.transforms` and adds them to a
FAISS index made by :func:`faiss.index_factory` (``"Flat"`` is exact; ``"IVF4096,Flat"``, ``"HNSW32"``,
``"IVF1024,PQ32"``... are approximate). :meth:`GeometryIndex.search` returns, per query, the ``k`` nearest points
by the geometry's own logit (higher = nearer), with their logit values: FAISS proposes the candidates, and their
logits are re-computed with :func:`euclip.geometry.pairwise_logits` from the stored embeddings (so a compressed index
still reports exact values, and the order among the candidates is euclip's). Optionally, for the cone geometries
(euclidean, hyperbolic), results are filtered by MERU-style entailment cones.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from euclip import geometry as geom
from euclip.index.store import Manifest, check_model, read_index_files, write_index_files
from euclip.index.transforms import GeometryTransform, choose_metric

__all__ = ["CONE_MODES", "GeometryIndex", "Neighbours", "build_index", "check_factory"]

# "query": keep results inside the query's entailment cone (the query entails them: a generic caption → specific
# images); "result": keep results whose cone contains the query (they entail it: an image → captions that describe it).
CONE_MODES: tuple[str, ...] = ("query", "result")

_ADD_BATCH = 65536  # rows transformed and added at a time: the float32 copy FAISS needs stays this small
_SEARCH_BATCH = 16384  # queries per FAISS call
_RESCORE_BUDGET = 1 << 22  # entries of the (queries × distinct candidates) logit block while re-scoring


class Neighbours(NamedTuple):
    """Search results, best first; rows with fewer than ``k`` results are padded with ``-inf`` and ``-1``.

    Attributes:
        scores: ``(Q, k)`` float32, the geometry's logit between each query and each result.
        indices: ``(Q, k)`` int64, rows of the index (``-1``: no result).
    """

    scores: torch.Tensor
    indices: torch.Tensor


def _faiss_message(error: Exception) -> str:
    """FAISS's C++ error text without its source location (``Error in <function> at <file>:<line>: ``)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def _divisors_near(n: int, m: int, count: int = 3) -> list[int]:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return sorted(sorted(divisors, key=lambda d: abs(d - m))[:count])


def _shares_memory(points: torch.Tensor, source) -> bool:
    try:
        other = source.detach().cpu().numpy() if isinstance(source, torch.Tensor) else np.asarray(source)
        return bool(np.shares_memory(points.numpy(), other))
    except (TypeError, RuntimeError):  # e.g. bfloat16, which numpy lacks (and which was converted, hence copied)
        return False


def _make_faiss_index(transform: GeometryTransform, factory: str):
    import faiss

    if not isinstance(factory, str) or not factory.strip():
        raise ValueError("the index factory string is empty (e.g. 'Flat', 'IVF4096,Flat', 'HNSW32')")
    try:
        return faiss.index_factory(transform.index_dim, factory, transform.faiss_metric)
    except RuntimeError as e:
        message = _faiss_message(e)
        hint = ""
        pq = re.search(r"PQ(\d+)", factory)
        if "multiple of the number of subquantizers" in message and pq:
            near = _divisors_near(transform.index_dim, int(pq.group(1)))
            hint = (f"; {transform.geometry} indexes of dimension {transform.dim} have {transform.index_dim} FAISS "
                    f"dimensions, divisible by {', '.join(map(str, near))}")
        raise ValueError(f"bad index factory string {factory!r}: {message}{hint}") from None


def _resolve_metric(geometry: str, logit: str, dim: int, metric: str, factory: str) -> str:
    """:func:`~euclip.index.transforms.choose_metric` for this factory (whether it makes a graph index)."""
    import faiss

    if metric != "auto" or geometry != "hyperbolic":
        return choose_metric(geometry, logit, metric)
    # The index's type decides (see euclip.index.transforms): build an empty one to ask it.
    probe = _make_faiss_index(GeometryTransform(geometry, logit, dim, 1.0, "ip"), factory)
    return choose_metric(geometry, logit, metric, graph=isinstance(faiss.downcast_index(probe), faiss.IndexHNSW))


def _lorentz_centroids(sample: np.ndarray, count: int, curvature: float, niter: int, seed: int) -> np.ndarray:
    """Centroids for a hyperbolic inverted file: k-means of the indexed vectors, projected onto the hyperboloid.

    Args:
        sample: ``(n, D + 1)`` indexed vectors ``(y_s, −y_t)``.

    Returns:
        ``(count, D + 1)`` float32 centroids ``(μ_s, −μ_t)`` on the hyperboloid, so that a query's inner product with
        one is ``⟨x, μ⟩_L``.

    FAISS would cluster the indexed vectors (in the ambient coordinates: fine for locality) and then put each of them
    in the list of the centroid with the largest inner product ``y_s·m_s + y_t |m_t|``, which is not the Lorentzian
    product and favours large norms, while queries pick lists by ``⟨x, m⟩_L``: the lists a query searches are not
    where its neighbours went. Each mean ``m`` lies inside the hyperboloid's cone (``m_t² > ‖m_s‖² + 1/c``, by
    convexity), and ``m / sqrt(c (m_t² − ‖m_s‖²))`` is the Lorentzian centroid of its cluster (Law et al., 2019); the
    caller assigns indexed points with the query-side vectors, so both sides use ``⟨·, μ⟩_L``.
    """
    import faiss

    kmeans = faiss.Kmeans(sample.shape[1], count, niter=niter, seed=seed)
    kmeans.train(sample)
    m = kmeans.centroids.astype(np.float64)
    minkowski = m[:, -1] ** 2 - (m[:, :-1] ** 2).sum(1)  # > 0 inside the cone
    return np.ascontiguousarray(m / np.sqrt(curvature * np.maximum(minkowski, 1e-12))[:, None], dtype=np.float32)


def _apply_search_params(index, params: str | None) -> None:
    if not params:
        return
    import faiss

    try:
        faiss.ParameterSpace().set_index_parameters(index, params)
    except RuntimeError as e:
        raise ValueError(f"bad search parameters {params!r} for this index: {_faiss_message(e)}") from None


def check_factory(geometry: str, logit: str, dim: int, factory: str, metric: str = "auto") -> None:
    """Raise the ``ValueError`` :func:`build_index` would for a bad ``factory`` or ``metric``, before any embedding.

    Args:
        dim: the embedding dimension ``D``.
    """
    geometry, logit = geom.resolve(geometry, logit)
    # norm_bound is irrelevant to the index's shape; 1.0 stands in for the data's.
    transform = GeometryTransform(geometry, logit, dim, 1.0, _resolve_metric(geometry, logit, dim, metric, factory),
                                  1.0)
    _make_faiss_index(transform, factory)


def build_index(embeddings, ids: list[str] | None, geometry: str, logit: str, curvature: float = 1.0,
                factory: str = "Flat", *, metric: str = "auto", search_params: str | None = None,
                train_size: int | None = None, seed: int = 0, modality: str | None = None,
                min_radius: float | None = None, model: dict | None = None, data: dict | None = None,
                progress: bool = False) -> GeometryIndex:
    """Index the manifold points ``embeddings`` ``(N, D)`` for search by ``geometry`` × ``logit``.

    Args:
        embeddings: points on the manifold (a tensor or an array; hyperbolic: space components).
        ids: ``N`` strings naming the rows (image paths, captions); ``None``: ``"0"``, ``"1"``, ...
        geometry, logit: as for :func:`euclip.geometry.pairwise_logits` (aliases such as ``"clip"`` are accepted
            for ``geometry`` when ``logit`` is ``None``).
        curvature: ``c`` of the hyperbolic geometry (a model's learned value).
        factory: FAISS index factory string: ``"Flat"`` (exact), ``"IVF4096,Flat"``, ``"HNSW32"``, ``"IVF1024,PQ32"``.
        metric: ``"auto"``, ``"ip"`` or ``"l2"``: how inner-product logits are searched (see
            :mod:`euclip.index.transforms`; ``"auto"``: inner products, but their L2 reduction for hyperbolic
            HNSW indexes).
        search_params: FAISS parameters for searching, e.g. ``"nprobe=16"`` (IVF) or ``"efSearch=128"`` (HNSW).
        train_size: vectors to train a trainable index on (IVF, PQ); default ``min(N, max(100_000, 50 · nlist))``,
            a random subset.
        seed: of that subset.
        modality, min_radius, model, data: recorded in the manifest (see :mod:`euclip.index.store`).
        progress: a progress bar while adding.

    Raises:
        ValueError: no embeddings, ``ids`` of another length, non-finite values, a bad factory string, or too
            few vectors to train the index.
    """
    import faiss
    from tqdm.auto import tqdm

    import euclip

    geometry, logit = geom.resolve(geometry, logit)
    shape = tuple(getattr(embeddings, "shape", np.shape(embeddings)))
    if len(shape) != 2:
        raise ValueError(f"embeddings must be a (N, D) matrix, got shape {shape}")
    if shape[0] == 0:
        raise ValueError("no embeddings to index: the data set is empty")
    transform = GeometryTransform(geometry, logit, shape[1], float(curvature),
                                  _resolve_metric(geometry, logit, shape[1], metric, factory))
    points = transform.points(embeddings)
    if _shares_memory(points, embeddings):
        points = points.clone()  # the index keeps its points: a later in-place change of the caller's must not leak in
    n = points.shape[0]
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(ids) != n:
        raise ValueError(f"{len(ids)} ids for {n} embeddings")
    transform = transform.with_norm_bound(points)
    index = _make_faiss_index(transform, factory)
    top = faiss.downcast_index(index)
    # Hyperbolic inverted files (see _lorentz_centroids): lists around centroids on the hyperboloid, and every point in
    # the list of its Lorentzian-nearest centroid, as queries choose their lists.
    lorentz_lists = transform.geometry == "hyperbolic" and transform.metric == "ip" and isinstance(top, faiss.IndexIVF)
    if not index.is_trained:
        ivf = faiss.try_extract_index_ivf(index)
        default = max(100_000, 50 * ivf.nlist) if ivf is not None else 100_000
        size = min(n, train_size or default)
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else np.arange(n)
        sample = transform.database(points[torch.from_numpy(rows)])
        try:
            if lorentz_lists:
                top.quantizer.add(_lorentz_centroids(sample, top.nlist, transform.curvature, top.cp.niter, seed))
            index.train(sample)  # with a filled quantizer, FAISS trains only what encodes the vectors (PQ, SQ)
        except RuntimeError as e:
            raise ValueError(f"cannot train index {factory!r} on {size} vectors: {_faiss_message(e)}") from None
    for start in tqdm(range(0, n, _ADD_BATCH), desc="index: add", disable=not progress, leave=False):
        chunk = points[start:start + _ADD_BATCH]
        vectors = transform.database(chunk)
        if lorentz_lists:
            _, lists = top.quantizer.search(transform.queries(chunk), 1)
            lists = np.ascontiguousarray(lists.ravel(), dtype=np.int64)
            top.add_core(len(vectors), faiss.swig_ptr(vectors), None, faiss.swig_ptr(lists))
        else:
            index.add(vectors)
    _apply_search_params(index, search_params)
    manifest = Manifest(geometry=geometry, logit=logit, curvature=float(curvature), dim=transform.dim,
                        index_dim=transform.index_dim, metric=transform.metric, norm_bound=transform.norm_bound,
                        factory=factory, count=n, search_params=search_params, modality=modality,
                        min_radius=min_radius, model=model, data=data,
                        euclip_version=getattr(euclip, "__version__", ""), faiss_version=faiss.__version__)
    return GeometryIndex(index, points.numpy(), ids, manifest)


class GeometryIndex:
    """A FAISS index over manifold points, searched by the geometry's own logit.

    Build with :func:`build_index`, or read from disk with :meth:`load`. Rows are numbered in the order they were
    added; ``ids[i]`` names row ``i`` and ``embeddings[i]`` is its point.
    """

    def __init__(self, faiss_index, embeddings: np.ndarray, ids: list[str], manifest: Manifest):
        self.index = faiss_index
        self.embeddings = embeddings
        self.ids = ids
        self.manifest = manifest
        self.transform = GeometryTransform(manifest.geometry, manifest.logit, manifest.dim, manifest.curvature,
                                           manifest.metric, manifest.norm_bound)

    # -- what it is -------------------------------------------------------------------------------------------------

    @property
    def geometry(self) -> str:
        return self.manifest.geometry

    @property
    def logit(self) -> str:
        return self.manifest.logit

    @property
    def curvature(self) -> float:
        return self.manifest.curvature

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def factory(self) -> str:
        return self.manifest.factory

    def __len__(self) -> int:
        return self.index.ntotal

    def __repr__(self) -> str:
        return (f"GeometryIndex({self.geometry}/{self.logit}, {len(self)} × {self.dim}, factory {self.factory!r}, "
                f"metric {self.manifest.metric})")

    def set_search_params(self, params: str | None) -> None:
        """FAISS search parameters (``"nprobe=16"``, ``"efSearch=128"``), applied now and saved with the index."""
        _apply_search_params(self.index, params)
        self.manifest.search_params = params

    def check_model(self, model) -> None:
        """Raise ``ValueError`` (naming what differs) unless ``model`` is the one that built this index."""
        check_model(self.manifest, model)

    # -- search -----------------------------------------------------------------------------------------------------

    def search(self, queries, k: int = 10, *, cone: str | None = None, min_radius: float | None = None,
               overfetch: int = 10, exact_scores: bool = True) -> Neighbours:
        """The ``k`` nearest rows to each query by the geometry's logit, best first.

        Args:
            queries: ``(Q, D)`` (or ``(D,)``) points on the same manifold as the index (hyperbolic: space components).
            k: results per query (``>= 1``); beyond the index size rows are padded with ``-1``.
            cone: entailment filter (euclidean and hyperbolic geometry): ``"query"`` keeps results inside the query's
                cone, ``"result"`` keeps results whose cone contains the query; ``None``: no filter.
            min_radius: ``K`` of the cones (default: the manifest's, else 0.1).
            overfetch: with a cone filter, ``k · overfetch`` candidates are fetched and filtered; fewer than ``k``
                may survive (padded).
            exact_scores: re-score the candidates with :func:`euclip.geometry.pairwise_logits` from the stored
                embeddings (and re-rank them by it); ``False``: convert FAISS's own scores.

        Returns:
            :class:`Neighbours` ``(scores, indices)``.

        Raises:
            ValueError: queries of another dimension or with non-finite values, ``k < 1``, an unknown ``cone`` mode,
                or a cone filter on the elliptic geometry.
        """
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if cone is not None:
            if cone not in CONE_MODES:
                raise ValueError(f"unknown cone filter {cone!r}; valid: {', '.join(CONE_MODES)}")
            if self.geometry not in geom.CONE_GEOMETRIES:
                raise ValueError(f"entailment cones are defined for {' and '.join(geom.CONE_GEOMETRIES)} geometry, "
                                 f"not for this {self.geometry} index")
            if overfetch < 1:
                raise ValueError(f"overfetch must be >= 1, got {overfetch}")
        radius = min_radius if min_radius is not None else (self.manifest.min_radius or 0.1)
        if radius <= 0:
            raise ValueError(f"min_radius must be positive, got {radius}")
        q = self.transform.points(queries, what="queries")
        n = len(self)
        fetch = min(n, k * overfetch if cone else k)
        scores_out = torch.full((q.shape[0], k), -math.inf)
        indices_out = torch.full((q.shape[0], k), -1, dtype=torch.long)
        if n == 0 or q.shape[0] == 0:
            return Neighbours(scores_out, indices_out)
        # FAISS searches large batches (its matrix products want them); re-scoring works on smaller blocks, whose
        # (queries × distinct candidates) logit matrix stays within _RESCORE_BUDGET entries.
        per_block = max(1, min(_SEARCH_BATCH, int(math.sqrt(_RESCORE_BUDGET / fetch))))
        for batch in range(0, q.shape[0], _SEARCH_BATCH):
            queries_batch = q[batch:batch + _SEARCH_BATCH]
            raw_batch, labels_batch = self.index.search(self.transform.queries(queries_batch), fetch)
            for offset in range(0, queries_batch.shape[0], per_block):
                rows = slice(offset, offset + per_block)
                block = queries_batch[rows]
                scores, labels = self._score(block, raw_batch[rows], labels_batch[rows], cone, radius, exact_scores)
                order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
                width, start = order.shape[1], batch + offset
                scores_out[start:start + len(block), :width] = scores.gather(1, order)
                indices_out[start:start + len(block), :width] = labels.gather(1, order)
        return Neighbours(scores_out, indices_out)

    def _score(self, q: torch.Tensor, raw: np.ndarray, labels: np.ndarray, cone: str | None, radius: float,
               exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, F)`` of FAISS's candidates (``-inf`` where there is none or the cone filter drops it)."""
        labels_t = torch.from_numpy(labels.astype(np.int64))
        valid = labels_t >= 0
        if exact:
            scores = torch.full(labels_t.shape, -math.inf)
        else:
            scores = torch.from_numpy(self.transform.to_logits(raw, q)).float().masked_fill_(~valid, -math.inf)
        if not (exact or cone) or not valid.any():
            return scores, labels_t.masked_fill_(~valid, -1)
        rows, cols = valid.nonzero(as_tuple=True)
        # Distinct candidates of the block, read once (sorted: sequential reads from a memory-mapped file).
        unique, inverse = np.unique(labels[valid.numpy()], return_inverse=True)
        candidates = torch.from_numpy(np.asarray(self.embeddings[unique], dtype=np.float32))
        if exact:
            block = geom.pairwise_logits(q, candidates, self.geometry, self.logit, self.curvature)
            scores[rows, cols] = block[rows, torch.from_numpy(inverse.reshape(-1))]
        if cone:
            keep = self._inside_cone(q[rows], candidates[torch.from_numpy(inverse.reshape(-1))], cone, radius)
            dropped = torch.zeros_like(valid)
            dropped[rows[~keep], cols[~keep]] = True
            scores.masked_fill_(dropped, -math.inf)
            valid &= ~dropped
        return scores, labels_t.masked_fill_(~valid, -1)

    def _inside_cone(self, queries: torch.Tensor, results: torch.Tensor, cone: str, radius: float) -> torch.Tensor:
        """Row-wise: is the child inside the parent's entailment cone? ``(V,)`` bool."""
        parent, child = (queries, results) if cone == "query" else (results, queries)
        angle = geom.exterior_angle(parent, child, self.geometry, self.curvature)
        return angle <= geom.half_aperture(parent, self.geometry, radius, self.curvature)

    def neighbour_ids(self, indices: torch.Tensor) -> list[list[str | None]]:
        """The ids of search results ``(Q, k)``, ``None`` for padding."""
        return [[self.ids[i] if i >= 0 else None for i in row] for row in indices.tolist()]

    # -- disk -------------------------------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write the index folder (see :mod:`euclip.index.store`); returns its path."""
        return write_index_files(folder, self.index, np.asarray(self.embeddings), self.ids, self.manifest)

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> GeometryIndex:
        """Read an index folder written by :meth:`save` (embeddings memory-mapped unless ``mmap=False``)."""
        index, embeddings, ids, manifest = read_index_files(folder, mmap=mmap)
        _apply_search_params(index, manifest.search_params)
        return cls(index, embeddings, ids, manifest)
