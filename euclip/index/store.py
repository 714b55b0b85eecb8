"""The on-disk index format: a folder with a FAISS index, the embeddings, their ids and a JSON manifest.

::

    INDEX/
      manifest.json    what the index is (below)
      index.faiss      the FAISS index (faiss.write_index) over the transformed vectors of euclip.index.transforms
      embeddings.npy   (N, D) float32 manifold points, row i = FAISS label i (hyperbolic: space components;
                       elliptic: unit vectors); numpy's .npy format, loaded memory-mapped
      ids.jsonl        N lines, line i = the JSON string naming row i (an image path, a caption, a shard:key)

``manifest.json`` fields: ``format`` (``"euclip-index"``), ``version`` (1), ``geometry``, ``logit``,
``curvature`` (``c``; 1.0 where unused), ``dim`` (``D``), ``index_dim`` (FAISS's dimension: ``D + 1`` for
hyperbolic, +1 for the L2 reduction of inner products), ``metric`` (``"ip"`` or ``"l2"``), ``norm_bound`` (``M`` of
that reduction, or null), ``factory`` (the FAISS index factory string), ``search_params``
(FAISS ParameterSpace string applied on load, e.g. ``"nprobe=16"``, or null), ``count`` (``N``), ``modality``
(``"image"``, ``"text"`` or null), ``min_radius`` (the run's entailment-cone ``K``, the default for cone
filtering, or null), ``model`` (null, or ``path``/``checkpoint`` of the run, its ``config``, a
``config_fingerprint`` and a ``weights_fingerprint``), ``data`` (how the embeddings were made), ``created`` (UTC,
ISO 8601), ``euclip_version``, ``faiss_version``.

The embeddings are kept beside the index so that search results carry the geometry's exact logits (re-scored with
:func:`euclip.geometry.pairwise_logits`) and entailment cones can be checked, whatever the index compresses.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "FORMAT",
    "VERSION",
    "Manifest",
    "check_model",
    "config_fingerprint",
    "model_identity",
    "read_index_files",
    "read_manifest",
    "weights_fingerprint",
    "write_index_files",
]

FORMAT = "euclip-index"
VERSION = 1
MANIFEST, FAISS_FILE, EMBEDDINGS, IDS = "manifest.json", "index.faiss", "embeddings.npy", "ids.jsonl"


@dataclass
class Manifest:
    """The contents of ``manifest.json`` (see the module docstring)."""

    geometry: str
    logit: str
    curvature: float
    dim: int
    index_dim: int
    metric: str
    factory: str
    count: int
    norm_bound: float | None = None
    search_params: str | None = None
    modality: str | None = None
    min_radius: float | None = None
    model: dict | None = None
    data: dict | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    euclip_version: str = ""
    faiss_version: str = ""
    format: str = FORMAT
    version: int = VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{where} is not an euclip index manifest (format {raw.get('format')!r} "
                             f"instead of {FORMAT!r})" if isinstance(raw, dict) else f"{where} is not a JSON object")
        if raw.get("version") != VERSION:
            raise ValueError(f"{where} has index format version {raw.get('version')}; this euclip reads version "
                             f"{VERSION}")
        missing = [f.name for f in fields(cls)
                   if f.name not in raw and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"{where} lacks the field(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# ----------------------------------------------------------------------------------------------------------------
# Model identity
# ----------------------------------------------------------------------------------------------------------------


def config_fingerprint(config: dict) -> str:
    """A short stable hash of a model config dictionary (canonical JSON: sorted keys)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A short hash of every tensor's name, dtype, shape and bytes, in name order (the trained weights' identity)."""
    h = hashlib.blake2b(digest_size=8)
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_identity(model, path: str | Path | None = None) -> dict:
    """What identifies the model that made an index's embeddings: its run path, config and fingerprints.

    Args:
        model: a :class:`~euclip.model.GeometricCLIP`.
        path: the run directory or checkpoint it was loaded from (recorded as an absolute path).
    """
    record: dict = {"path": None, "checkpoint": None}
    if path is not None:
        p = Path(path).resolve()
        record["path"] = str(p)
        record["checkpoint"] = str(p / "checkpoints" / "latest.pt" if p.is_dir() else p)
    config = model.config_dict()
    record.update(config=config, config_fingerprint=config_fingerprint(config),
                  weights_fingerprint=weights_fingerprint(model.state_dict()))
    return record


def check_model(manifest: Manifest, model, where: str = "the index") -> None:
    """Refuse a model other than the one that built the index, naming what differs.

    Raises:
        ValueError: a different geometry or logit, different config fields, or different weights.
    """
    if (model.geometry, model.logit) != (manifest.geometry, manifest.logit):
        raise ValueError(f"{where} holds {manifest.geometry}/{manifest.logit} embeddings, but the model is "
                         f"{model.geometry}/{model.logit}")
    if manifest.model is None:
        return  # built from bare embeddings: only the geometry can be checked
    built = manifest.model.get("config") or {}
    config = model.config_dict()
    differing = sorted(k for k in set(built) | set(config) if built.get(k) != config.get(k))
    if differing:
        detail = ", ".join(f"{k}: {built.get(k)!r} vs {config.get(k)!r}" for k in differing)
        raise ValueError(f"{where} was built by a model with another config (index vs model: {detail})")
    expected = manifest.model.get("weights_fingerprint")
    actual = weights_fingerprint(model.state_dict())
    if expected is not None and expected != actual:
        raise ValueError(f"{where} was built by other weights of the same config (weights fingerprint {expected} "
                         f"from {manifest.model.get('checkpoint')}; this model's is {actual}): rebuild the index")


# ----------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------


def write_index_files(folder: str | Path, faiss_index, embeddings: np.ndarray, ids: list[str],
                      manifest: Manifest) -> Path:
    """Write the four files of an index into ``folder`` (created; files written under temporary names, then renamed).

    The manifest is renamed last, so a folder with a manifest is complete.
    """
    import faiss

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an interrupted rewrite leaves no manifest, never a mismatched one
    tmp = f".tmp-{os.getpid()}"
    faiss.write_index(faiss_index, str(folder / (FAISS_FILE + tmp)))
    with open(folder / (EMBEDDINGS + tmp), "wb") as f:
        np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32))
    with open(folder / (IDS + tmp), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(name, ensure_ascii=False) + "\n" for name in ids)
    (folder / (MANIFEST + tmp)).write_text(manifest.to_json())
    for name in (FAISS_FILE, EMBEDDINGS, IDS, MANIFEST):
        os.replace(folder / (name + tmp), folder / name)
    return folder


def read_manifest(folder: str | Path) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"no index folder at {folder}")
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an euclip index: it has no {MANIFEST}")
    return Manifest.from_json(path.read_text(), str(path))


def read_index_files(folder: str | Path, mmap: bool = True) -> tuple[object, np.ndarray, list[str], Manifest]:
    """Read ``(faiss_index, embeddings, ids, manifest)`` from an index folder, checking that they agree.

    Args:
        mmap: memory-map the embeddings (rows are read when a search needs them) instead of loading them.

    Raises:
        FileNotFoundError: the folder or one of its files is missing.
        ValueError: a malformed manifest, or files that disagree with it (count, dimension).
    """
    import faiss

    folder = Path(folder)
    manifest = read_manifest(folder)
    for name in (FAISS_FILE, EMBEDDINGS, IDS):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"index {folder} lacks {name}")
    index = faiss.read_index(str(folder / FAISS_FILE))
    embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r" if mmap else None)
    with open(folder / IDS, encoding="utf-8") as f:
        ids = [json.loads(line) for line in f]
    problems = []
    if index.ntotal != manifest.count:
        problems.append(f"{FAISS_FILE} holds {index.ntotal} vectors")
    if index.d != manifest.index_dim:
        problems.append(f"{FAISS_FILE} has dimension {index.d} (manifest index_dim {manifest.index_dim})")
    if embeddings.ndim != 2 or embeddings.shape != (manifest.count, manifest.dim):
        problems.append(f"{EMBEDDINGS} has shape {embeddings.shape} (manifest: ({manifest.count}, {manifest.dim}))")
    if len(ids) != manifest.count:
        problems.append(f"{IDS} has {len(ids)} lines")
    if problems:
        raise ValueError(f"index {folder} is inconsistent with its manifest (count {manifest.count}): "
                         + "; ".join(problems))
    return index, embeddings, ids, manifest
