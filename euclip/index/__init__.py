"""Nearest-neighbour search over euclip embeddings, for every geometry × logit, with FAISS.

Every logit of euclip ranks like a standard FAISS metric on transformed vectors (:mod:`euclip.index.transforms`):
the elliptic logits like the inner product of unit vectors, the Euclidean distances like L2 and the Euclidean inner
logit like the dot product, and all three hyperbolic logits like the Lorentzian inner product
``⟨x, y⟩_L = x_s·y_s − x_t y_t``, the dot product of the query ``(x_s, x_t)`` with the indexed ``(y_s, −y_t)``
(``D + 1`` dimensions). So a ``"Flat"`` index searches exactly, and FAISS's approximate indexes (IVF, HNSW, PQ)
apply to every geometry. Results carry the geometry's own logit values, re-scored from the stored embeddings, and
can be filtered by entailment cones (euclidean and hyperbolic geometry, MERU-style).

Python::

    from euclip.index import build_index, GeometryIndex
    index = build_index(points, ids, "hyperbolic", "distance", curvature=c, factory="HNSW32")
    scores, rows = index.search(queries, k=10)           # (Q, 10) logits (higher = nearer), (Q, 10) rows
    index.save("runs/meru/index")                        # the on-disk format below
    index = GeometryIndex.load("runs/meru/index")

Command line: ``euclip index build RUN --data DATA --output INDEX`` and
``euclip index search INDEX --text "a red triangle" -k 5`` (see :mod:`euclip.cli.index`).

On-disk format (a folder; details in :mod:`euclip.index.store`)::

    INDEX/manifest.json    geometry, logit, curvature, dim, index_dim, metric, norm_bound, factory, search_params,
                           count, modality, min_radius, model (run path, checkpoint, config, config and weights
                           fingerprints), data, created, euclip and faiss versions, format, version
    INDEX/index.faiss      the FAISS index over the transformed vectors (faiss.write_index)
    INDEX/embeddings.npy   (count, dim) float32 manifold points, row i = FAISS label i
    INDEX/ids.jsonl        count lines: the JSON string naming row i (image path, caption, shard:key)

Retrieval recall@k through an index, in bounded memory: :func:`retrieval_recall`.
"""

from euclip.index.retrieval import retrieval_recall
from euclip.index.search import CONE_MODES, GeometryIndex, Neighbours, build_index
from euclip.index.store import Manifest, check_model, model_identity
from euclip.index.transforms import GeometryTransform

__all__ = ["CONE_MODES", "GeometryIndex", "GeometryTransform", "Manifest", "Neighbours", "build_index",
           "check_model", "model_identity", "retrieval_recall"]
