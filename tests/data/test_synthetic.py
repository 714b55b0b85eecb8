"""Tests of the built-in synthetic shapes dataset (euclip.data.synthetic)."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from euclip.data import synthetic as S
from euclip.data.synthetic import (COLOR_FAMILIES, COLORS, HELDOUT_COMBINATIONS, SHAPE_FAMILIES, SHAPES, TEMPLATES,
                                   Attributes, SyntheticShapes, caption_pool, color_taxonomy, shape_taxonomy)

N_ATTR = 3000  # samples whose attributes/captions are checked (cheap: no rendering)


@pytest.fixture(scope="module")
def train() -> SyntheticShapes:
    return SyntheticShapes("train", size=N_ATTR, seed=0)


@pytest.fixture(scope="module")
def train_attrs(train: SyntheticShapes) -> list[Attributes]:
    return [train.attributes(i) for i in range(N_ATTR)]


@pytest.fixture(scope="module")
def train_captions(train: SyntheticShapes) -> list[str]:
    return [train.caption(i) for i in range(N_ATTR)]


def _contains_any(text: str, phrases: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(p)}\b", text) for p in phrases)


# ---------------------------------------------------------------------------------------------------------------
# Vocabulary, taxonomy, held-out set
# ---------------------------------------------------------------------------------------------------------------


def test_vocabulary_sizes():
    assert len(SHAPES) >= 12 and len(set(SHAPES)) == len(SHAPES)
    assert len(SHAPE_FAMILIES) >= 3 and sorted(s for v in SHAPE_FAMILIES.values() for s in v) == sorted(SHAPES)
    assert len(COLORS) >= 8 and len(COLOR_FAMILIES) >= 3
    assert sorted(c for v in COLOR_FAMILIES.values() for c in v) == sorted(COLORS)
    assert 8 <= len(TEMPLATES) <= 12 and all(t.count("{}") == 1 for t in TEMPLATES)
    # Every canonical name is also a caption synonym, so the class name itself appears in captions.
    assert all(S.SHAPE_SYNONYMS[s][0] == s for s in SHAPES)
    # Colours are far enough apart to stay nameable after the +-10 jitter.
    rgb = np.array([S.COLOR_RGB[c] for c in COLORS], dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(COLORS)) * 1e9
    assert d.min() > 70


def test_templates_are_caption_style():
    # A zero-shot prompt is a training caption: a frame filled with "the" + noun.
    for t in TEMPLATES:
        assert t.replace("the {}", "{}") in S.FRAMES


def test_heldout_combinations():
    assert HELDOUT_COMBINATIONS <= {(c, s) for c in COLORS for s in SHAPES}
    assert {s for _, s in HELDOUT_COMBINATIONS} == set(SHAPES)
    assert {S.COLOR_TO_FAMILY[c] for c, _ in HELDOUT_COMBINATIONS} == set(COLOR_FAMILIES)
    # Each shape and colour keeps most of its combinations for training.
    for s in SHAPES:
        assert sum((c, s) in HELDOUT_COMBINATIONS for c in COLORS) <= 2
    for c in COLORS:
        assert sum((c, s) in HELDOUT_COMBINATIONS for s in SHAPES) <= 2


def test_shape_taxonomy():
    tree = shape_taxonomy()
    assert tree.root == "shape"
    assert list(tree.leaves) == list(SHAPES)
    assert tree.children["shape"] == list(SHAPE_FAMILIES)
    for family, leaves in SHAPE_FAMILIES.items():
        assert tree.children[family] == list(leaves)
        assert tree.depth(family) == 1
    for s in SHAPES:
        assert tree.depth(s) == 2 and tree.parent[s] == S.SHAPE_TO_FAMILY[s]
    assert tree.lca("triangle", "square") == "polygon" and tree.lca("triangle", "circle") == "shape"


def test_color_taxonomy():
    tree = color_taxonomy()
    assert tree.root == "color" and list(tree.leaves) == list(COLORS)
    assert all(tree.depth(c) == 2 and tree.parent[c] == S.COLOR_TO_FAMILY[c] for c in COLORS)


def test_caption_pool_covers_taxonomy():
    pool = caption_pool()
    captions = [c for c, _, _ in pool]
    assert len(captions) == len(set(captions))
    assert {lvl for _, lvl, _ in pool} == set(S.CAPTION_LEVELS)
    tree = shape_taxonomy()
    assert all(node in tree for _, _, node in pool)
    nodes_by_level = collections.defaultdict(set)
    for _, lvl, node in pool:
        nodes_by_level[lvl].add(node)
    assert nodes_by_level[0] == {"shape"} and nodes_by_level[1] == set(SHAPE_FAMILIES)
    assert nodes_by_level[2] == nodes_by_level[3] == nodes_by_level[4] == set(SHAPES)
    assert ("a shape", 0, "shape") in pool and ("a polygon", 1, "polygon") in pool
    assert ("a triangle", 2, "triangle") in pool and ("a red triangle", 3, "triangle") in pool
    assert ("an orange ellipse", 3, "ellipse") in pool
    assert all(f"{c} {s}" in " ".join(captions) for c in COLORS for s in SHAPES)


# ---------------------------------------------------------------------------------------------------------------
# Determinism, splits, labels
# ---------------------------------------------------------------------------------------------------------------


def test_determinism():
    a, b = SyntheticShapes("train", seed=3), SyntheticShapes("train", seed=3)
    for i in (0, 1, 17, 9_999, 123_456):  # indices past len() continue the stream
        x1, c1 = a[i]
        x2, c2 = a[i]
        x3, c3 = b[i]
        assert torch.equal(x1, x2) and torch.equal(x1, x3)
        assert c1 == c2 == c3 and a.attributes(i) == b.attributes(i)
    other = SyntheticShapes("train", seed=4)
    assert sum(not torch.equal(a[i][0], other[i][0]) for i in range(20)) == 20
    assert sum(a.caption(i) != other.caption(i) for i in range(20)) >= 15


def test_train_and_test_are_different_streams():
    tr, te = SyntheticShapes("train", seed=0), SyntheticShapes("test", seed=0)
    assert all(not torch.equal(tr[i][0], te[i][0]) for i in range(20))


def _digest(ds: SyntheticShapes, n: int = 8) -> str:
    return hashlib.sha1(b"".join(ds[i][0].numpy().tobytes() + ds.caption(i).encode() for i in range(n))).hexdigest()


def test_stable_across_processes():
    # A fresh interpreter with another hash seed produces the same samples (no salted hash() anywhere).
    code = ("import hashlib; from euclip.data.synthetic import SyntheticShapes as D; d = D('test', seed=5); "
            "print(hashlib.sha1(b''.join(d[i][0].numpy().tobytes() + d.caption(i).encode() for i in range(8)))"
            ".hexdigest())")
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == _digest(SyntheticShapes("test", seed=5))


def test_splits_respect_heldout(train_attrs: list[Attributes]):
    test_attrs = [SyntheticShapes("test").attributes(i) for i in range(1000)]
    for a in train_attrs + test_attrs:
        assert (a.color, a.shape) not in HELDOUT_COMBINATIONS
    held = SyntheticShapes("heldout")
    held_attrs = [held.attributes(i) for i in range(1000)]
    assert {(a.color, a.shape) for a in held_attrs} == set(HELDOUT_COMBINATIONS)
    # Every shape and every colour occurs in train and in heldout.
    for attrs in (train_attrs, held_attrs):
        assert {a.shape for a in attrs} == set(SHAPES) and {a.color for a in attrs} == set(COLORS)


def test_attributes_are_consistent(train_attrs: list[Attributes]):
    for a in train_attrs:
        assert a.family == S.SHAPE_TO_FAMILY[a.shape] and a.color_family == S.COLOR_TO_FAMILY[a.color]
        assert a.size in S.SIZES and a.position in S.POSITIONS and a.background in S.BACKGROUNDS
        assert a.caption_level in S.CAPTION_LEVELS
    assert {a.position for a in train_attrs} == set(S.POSITIONS)
    assert {a.background for a in train_attrs} == set(S.BACKGROUNDS)
    assert {a.size for a in train_attrs} == set(S.SIZES)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), index=st.integers(0, 2**40), split=st.sampled_from(["train", "test", "heldout"]))
def test_any_index_is_a_valid_sample(seed: int, index: int, split: str):
    ds = SyntheticShapes(split, size=1, seed=seed)
    a = ds.attributes(index)
    assert ((a.color, a.shape) in HELDOUT_COMBINATIONS) == (split == "heldout")
    assert ds.caption(index) == ds.caption(index) and ds.caption(index).strip()


def test_labels_agree_with_attributes():
    ds = SyntheticShapes("train", size=500, seed=2)
    labels, color_labels = ds.labels(), ds.color_labels()
    assert labels.shape == color_labels.shape == (500,) and labels.dtype == torch.long
    for i in range(500):
        a = ds.attributes(i)
        assert SHAPES[int(labels[i])] == a.shape and COLORS[int(color_labels[i])] == a.color


def test_bad_arguments():
    with pytest.raises(ValueError, match="train"):
        SyntheticShapes("validation")
    with pytest.raises(ValueError):
        SyntheticShapes("train", size=0)
    with pytest.raises(ValueError):
        SyntheticShapes("train", size=-5)
    with pytest.raises(ValueError):
        SyntheticShapes("train", seed=-1)
    with pytest.raises(IndexError):
        SyntheticShapes("train").attributes(-1)
    for bad in ((1, 1), (0, 0, 0, 0, 0), (1, -1, 1, 1, 1), (1, float("nan"), 1, 1, 1)):
        with pytest.raises(ValueError, match="caption level frequencies must be 5 non-negative numbers"):
            SyntheticShapes("train", level_probs=bad)


def test_caption_level_frequencies_can_be_chosen():
    only_shapes = SyntheticShapes("train", seed=0, level_probs=(0, 0, 1, 0, 0))
    assert {only_shapes.attributes(i).caption_level for i in range(300)} == {2}
    generic = SyntheticShapes("train", seed=0, level_probs=(2, 2, 0, 0, 0))  # normalised to (0.5, 0.5, 0, 0, 0)
    assert generic.level_probs == (0.5, 0.5, 0.0, 0.0, 0.0)
    counts = collections.Counter(generic.attributes(i).caption_level for i in range(2000))
    assert set(counts) == {0, 1} and abs(counts[0] / 2000 - 0.5) < 0.04
    # The level draw does not change what is drawn: same objects, only captions differ.
    default = SyntheticShapes("train", seed=0)
    assert all(torch.equal(default[i][0], only_shapes[i][0]) for i in range(5))


def test_colour_captions_follow_their_per_epoch_schedule():
    n = 400
    single = (0, 0, 1, 0, 0)  # every caption names one attribute
    schedule = SyntheticShapes("train", size=n, seed=3, level_probs=single, color_captions=(0.0, 1.0, 0.5))

    def names(caption: str, words) -> bool:
        return any(re.search(rf"\b{re.escape(w)}\b", caption) for w in words)

    def names_colour_only(index: int) -> bool:
        caption, attrs = schedule.caption(index), schedule.attributes(index)
        has_colour, has_shape = names(caption, S.COLOR_SYNONYMS[attrs.color]), names(caption, _ALL_SHAPE_WORDS)
        assert has_colour != has_shape, caption  # one attribute, the object's own
        return has_colour and names(caption, S.GENERIC_NOUNS)

    assert not any(names_colour_only(i) for i in range(n))  # epoch 0: shapes only
    assert all(names_colour_only(i) for i in range(n, 2 * n))  # epoch 1: colours only
    later = sum(names_colour_only(i) for i in range(2 * n, 5 * n))  # epoch 2 and after: the last value, 0.5
    assert abs(later / (3 * n) - 0.5) < 0.06
    # Without colour captions the captions are those of the default dataset, whatever the schedule's length.
    default = SyntheticShapes("train", size=n, seed=3, level_probs=single)
    zeros = SyntheticShapes("train", size=n, seed=3, level_probs=single, color_captions=(0.0, 0.0))
    assert [default.caption(i) for i in range(0, 3 * n, 7)] == [zeros.caption(i) for i in range(0, 3 * n, 7)]
    for bad in ((), (1.5,), (0.2, -0.1), (float("nan"),)):
        with pytest.raises(ValueError, match=r"colour-caption fractions must be one or more numbers in \[0, 1\]"):
            SyntheticShapes("train", color_captions=bad)


# ---------------------------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------------------------

_ALL_COLOR_WORDS = tuple(w for c in COLORS for w in S.COLOR_SYNONYMS[c])
_ALL_SHAPE_WORDS = tuple(w for s in SHAPES for w in S.SHAPE_SYNONYMS[s])
_ALL_SIZE_WORDS = tuple(w for s in S.SIZES for w in S.SIZE_SYNONYMS[s])


def test_caption_levels_and_contents(train_attrs: list[Attributes], train_captions: list[str]):
    counts = collections.Counter(a.caption_level for a in train_attrs)
    for level, p in zip(S.CAPTION_LEVELS, S.LEVEL_PROBS):
        assert abs(counts[level] / N_ATTR - p) < 0.03, (level, counts)
    for a, cap in zip(train_attrs, train_captions):
        level = a.caption_level
        shape_ok = _contains_any(cap, S.SHAPE_SYNONYMS[a.shape])
        color_ok = _contains_any(cap, S.COLOR_SYNONYMS[a.color])
        if level == 0:
            assert _contains_any(cap, S.GENERIC_NOUNS) and not _contains_any(cap, _ALL_SHAPE_WORDS), cap
        elif level == 1:
            assert _contains_any(cap, S.FAMILY_PHRASES[a.family]) and not _contains_any(cap, _ALL_SHAPE_WORDS), cap
        else:
            assert shape_ok, cap
        if level <= 2:
            assert not _contains_any(cap, _ALL_COLOR_WORDS), cap
        else:
            assert color_ok, cap
        if level <= 3:
            assert not _contains_any(cap, _ALL_SIZE_WORDS), cap
        else:
            assert _contains_any(cap, S.SIZE_SYNONYMS[a.size]), cap
            assert _contains_any(cap, S.POSITION_PHRASES[a.position]), cap
            assert _contains_any(cap, S.BACKGROUND_PHRASES[a.background]), cap


def test_captions_are_varied(train_captions: list[str]):
    # Most captions in a training batch are distinct (identical ones are shared positives for the loss), even
    # though 70 % of them name only the shape: frames, articles and synonyms vary the wording.
    for start in range(0, 1024, 256):
        assert len(set(train_captions[start:start + 256])) > 0.8 * 256
    assert len(set(train_captions)) > 0.35 * N_ATTR
    # Articles are right: no "a" before a vowel-initial word.
    assert not any(re.search(r"\ba [aeiou]", c) for c in train_captions)


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


def test_tensor_format_and_transform():
    ds = SyntheticShapes("train", seed=0)
    x, cap = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(cap, str)
    assert x.min() >= -1.0 and x.max() <= 1.0
    img = ds.render(0)
    assert img.size == (32, 32) and img.mode == "RGB"
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(x, expected, atol=1e-6)
    with_t = SyntheticShapes("train", seed=0, transform=lambda im: np.asarray(im).sum())
    assert with_t[0] == (np.asarray(img).sum(), cap)
    big = SyntheticShapes("train", seed=0, image_size=48)
    assert big[0][0].shape == (3, 48, 48) and big.caption(0) == cap


@pytest.fixture(scope="module")
def rendered() -> tuple[list[Attributes], np.ndarray, np.ndarray]:
    ds = SyntheticShapes("train", seed=7)
    n = 900
    attrs = [ds.attributes(i) for i in range(n)]
    images, masks = zip(*(ds._render_array(i) for i in range(n)))
    return attrs, np.stack(images).astype(np.float32), np.stack(masks)


def test_object_colour_dominates_inside_mask(rendered):
    attrs, images, masks = rendered
    palette = np.array([S.COLOR_RGB[c] for c in COLORS], dtype=np.float32)
    for a, img, m in zip(attrs, images, masks):
        inside = m > 0.95
        assert inside.sum() >= 20, a  # even small thin shapes cover a good number of pixels
        mean = img[inside].mean(0)
        assert COLORS[int(np.linalg.norm(palette - mean, axis=1).argmin())] == a.color
        # ...and the object stands out from the background around it.
        outside = m < 0.05
        assert np.linalg.norm(mean - img[outside].mean(0)) > 60


def test_shapes_look_different(rendered):
    attrs, _, masks = rendered
    # Average mask of large centred-ish objects per shape: every pair of shapes differs clearly.
    means = {}
    for s in SHAPES:
        sel = [m for a, m in zip(attrs, masks) if a.shape == s and a.size == "large"]
        assert len(sel) >= 10
        means[s] = np.mean(sel, axis=0)
    for i, s in enumerate(SHAPES):
        for t in SHAPES[i + 1:]:
            assert np.abs(means[s] - means[t]).mean() > 0.02, (s, t)
    # Object area depends on the size class.
    area = collections.defaultdict(list)
    for a, m in zip(attrs, masks):
        area[a.size].append(m.mean())
    assert np.mean(area["large"]) > 2 * np.mean(area["small"])


def test_position_follows_attribute(rendered):
    attrs, _, masks = rendered
    # The centre of a small object's bounding box lies near its grid cell's centre (8, 16 or 24 px). (Crescents are
    # placed by the box of their whole disc, of which the visible part is only the left side.)
    for a, m in zip(attrs, masks):
        if a.size != "small" or a.shape == "crescent":
            continue
        ys, xs = np.nonzero(m > 0.5)
        cx, cy = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2
        row, col = divmod(S.POSITIONS.index(a.position), 3)
        assert abs(cx - (8 + 8 * col)) < 6 and abs(cy - (8 + 8 * row)) < 6, (a, cx, cy)


def test_shape_is_learnable_from_pixels():
    # A linear (ridge-regression) classifier on crude "foreground-ness" features of 16x16 pixels beats chance by far,
    # so the shape signal is really in the images. A sanity check, not a benchmark: closed form, so it stays fast.
    def features(ds: SyntheticShapes) -> torch.Tensor:
        x = F.avg_pool2d(torch.stack([ds[i][0] for i in range(len(ds))]), 2)
        x = (x - x.mean((2, 3), keepdim=True)).abs().mean(1).flatten(1)  # distance from the image's mean colour
        x = (x - x.mean(1, keepdim=True)) / (x.std(1, keepdim=True) + 1e-6)
        return torch.cat([x, torch.ones(len(x), 1)], 1).double()  # + bias column

    tr, te = SyntheticShapes("train", 2000, seed=1), SyntheticShapes("test", 500, seed=1)
    xtr, xte = features(tr), features(te)
    targets = F.one_hot(tr.labels(), len(SHAPES)).double()
    w = torch.linalg.solve(xtr.T @ xtr + 10 * torch.eye(xtr.shape[1], dtype=torch.double), xtr.T @ targets)
    accuracy = ((xte @ w).argmax(1) == te.labels()).double().mean().item()
    assert accuracy > 3 / len(SHAPES), accuracy


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def _collate(batch):
    return torch.stack([x for x, _ in batch]), [c for _, c in batch]


def test_dataloader_workers_match_direct_indexing():
    ds = SyntheticShapes("train", size=48, seed=11)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, collate_fn=_collate)
    images, captions = [], []
    for x, c in loader:
        images.append(x)
        captions += c
    images = torch.cat(images)
    assert images.shape == (48, 3, 32, 32)
    for i in range(48):
        x, c = ds[i]
        assert torch.equal(images[i], x) and captions[i] == c


def test_benchmark_runs():
    assert S.benchmark(n=50) > 0
