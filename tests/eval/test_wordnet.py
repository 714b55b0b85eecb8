"""WordNet is-a trees, offline: loading Debian's WordNet 3.0 through nltk, and agreement with HyCoCLIP's tree.

Needs WordNet 3.0 installed (``apt-get install -y wordnet-base``); the tests that read WordNet are skipped only when
neither that nor nltk's own WordNet data is present.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import nltk
import numpy as np
import pytest

from euclip.eval import wordnet as wnmod
from euclip.eval.hierarchy import hierarchy_metrics
from euclip.eval.wordnet import (
    GROUP_SUFFIX,
    LEXNAMES,
    WordNetUnavailableError,
    find_system_wordnet,
    hypernym_chain,
    lexnames_text,
    load_wordnet,
    prepare_wordnet_data,
    synset_from_wnid,
    wnid_of,
    wnid_to_name,
    wordnet_tree,
)
from euclip.tree import Tree

IMAGENET_ISA = Path(__file__).resolve().parents[3] / "shared" / "data" / "imagenet_isa.txt"

ENTITY, PHYSICAL_ENTITY, ANIMAL, VERTEBRATE, MAMMAL = "n00001740", "n00001930", "n00015388", "n01471682", "n01861778"
CARNIVORE, CANINE, DOG, DOMESTIC_ANIMAL, TOY_DOG = "n02075296", "n02083346", "n02084071", "n01317541", "n02085374"
CHIHUAHUA, JAPANESE_SPANIEL, TABBY = "n02085620", "n02085782", "n02123045"


@pytest.fixture(scope="module")
def wn(tmp_path_factory: pytest.TempPathFactory):
    """WordNet, with any copy of the system files going to a temporary folder rather than the user's cache."""
    saved_path = list(nltk.data.path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(wnmod.ENV_DATA_DIR, str(tmp_path_factory.mktemp("nltk_data")))
        wnmod.get_wordnet.cache_clear()
        try:
            reader = wnmod.get_wordnet()
        except WordNetUnavailableError as err:
            pytest.skip(f"WordNet unavailable: {err}")
        yield reader
    wnmod.get_wordnet.cache_clear()
    nltk.data.path[:] = saved_path


# ---------------------------------------------------------------------------------------------------------------
# Installing and loading
# ---------------------------------------------------------------------------------------------------------------

def test_lexnames_file() -> None:
    lines = lexnames_text().splitlines()
    assert len(lines) == len(LEXNAMES) == 45
    # Spot checks against lexnames(5WN); category 1 noun, 2 verb, 3 adjective, 4 adverb.
    assert lines[0] == "00\tadj.all\t3"
    assert lines[2] == "02\tadv.all\t4"
    assert lines[3] == "03\tnoun.Tops\t1"
    assert lines[5] == "05\tnoun.animal\t1"
    assert lines[28] == "28\tnoun.time\t1"
    assert lines[29] == "29\tverb.body\t2"
    assert lines[43] == "43\tverb.weather\t2"
    assert lines[44] == "44\tadj.ppl\t3"
    # nltk's reader asserts the numbers run 0, 1, 2, ... and splits each line into three fields.
    for i, line in enumerate(lines):
        number, name, category = line.split()
        assert int(number) == i and name == LEXNAMES[i] and category in "1234"


def test_missing_wordnet_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(WordNetUnavailableError) as info:
        prepare_wordnet_data(source=tmp_path / "nothing-here", data_dir=tmp_path / "data")
    assert "apt-get install wordnet-base" in str(info.value)
    assert "python -m nltk.downloader wordnet" in str(info.value)


def test_get_wordnet_without_any_wordnet(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(*args: object, **kwargs: object) -> None:
        raise LookupError("no nltk data")

    monkeypatch.setattr(wnmod.nltk.data, "find", not_found)
    monkeypatch.setattr(wnmod, "find_system_wordnet", lambda: None)
    wnmod.get_wordnet.cache_clear()
    try:
        with pytest.raises(WordNetUnavailableError, match="apt-get install wordnet-base"):
            wnmod.get_wordnet()
        assert not wnmod.wordnet_available()
    finally:
        wnmod.get_wordnet.cache_clear()


def test_prepare_copies_system_files_and_needs_no_sense_index(tmp_path: Path) -> None:
    system = find_system_wordnet()
    if system is None:
        pytest.skip("no system WordNet (apt-get install -y wordnet-base)")
    # A source of symbolic links without index.sense, as with Debian's wordnet-base alone: nltk must get real
    # files, a lexnames file, and must not need the sense index.
    source = tmp_path / "source"
    source.mkdir()
    for name in wnmod._REQUIRED_FILES:
        (source / name).symlink_to(system / name)
    corpus = prepare_wordnet_data(source=source, data_dir=tmp_path / "data")
    assert corpus == tmp_path / "data" / "corpora" / "wordnet"
    for name in wnmod._REQUIRED_FILES:
        assert (corpus / name).is_file() and not (corpus / name).is_symlink()
        assert (corpus / name).stat().st_size == (system / name).stat().st_size
    assert (corpus / "lexnames").read_text() == lexnames_text()
    assert not (corpus / "index.sense").exists()
    # A second call copies nothing.
    mtimes = {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()}
    prepare_wordnet_data(source=source, data_dir=tmp_path / "data")
    assert {p.name: p.stat().st_mtime_ns for p in corpus.iterdir()} == mtimes
    assert not [p for p in corpus.iterdir() if p.name.startswith(".")]  # no temporary files left behind

    reader = load_wordnet(corpus)
    assert reader.get_version() == "3.0"
    assert synset_from_wnid(DOG, reader).name() == "dog.n.01"


def test_default_data_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(wnmod.ENV_DATA_DIR, str(tmp_path / "x"))
    assert wnmod.default_data_dir() == tmp_path / "x"
    monkeypatch.delenv(wnmod.ENV_DATA_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert wnmod.default_data_dir() == tmp_path / "cache" / "euclip" / "nltk_data"


# ---------------------------------------------------------------------------------------------------------------
# wnids
# ---------------------------------------------------------------------------------------------------------------

def test_wnids(wn) -> None:
    dog = synset_from_wnid(DOG, wn)
    assert dog.name() == "dog.n.01"
    assert wnid_of(dog) == DOG
    assert wnid_to_name(DOG, wn) == "dog"
    assert wnid_to_name(TOY_DOG, wn) == "toy dog"  # underscores become spaces
    assert wnid_to_name("n01440764", wn) == "tench"  # ImageNet-1k's first class
    for bad in ("dog", "n0208407", "n020840711", "v02084071", 2084071):
        with pytest.raises(ValueError, match="not a wnid"):
            synset_from_wnid(bad, wn)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n02084072"):
        synset_from_wnid("n02084072", wn)  # one byte into dog's line: no synset starts there
    with pytest.raises(ValueError, match="noun"):
        wnid_of(wn.synset("run.v.01"))


def test_dog_hypernyms(wn) -> None:
    # WordNet 3.0: dog.n.01 has two hypernyms, canine.n.02 (12 edges below entity) and domestic_animal.n.01
    # (7 edges below entity).
    assert sorted(wnid_of(h) for h in synset_from_wnid(DOG, wn).hypernyms()) == [DOMESTIC_ANIMAL, CANINE]
    longest = hypernym_chain(DOG, wordnet=wn)
    assert longest[0] == ENTITY and longest[-1] == DOG and len(longest) == 14
    assert longest[1] == PHYSICAL_ENTITY
    for ancestor in (ANIMAL, VERTEBRATE, MAMMAL, CARNIVORE, CANINE):
        assert ancestor in longest
    assert DOMESTIC_ANIMAL not in longest
    shortest = hypernym_chain(DOG, "shortest", wn)
    assert shortest[-2:] == [DOMESTIC_ANIMAL, DOG] and CANINE not in shortest and ANIMAL in shortest
    assert len(shortest) == 9
    with pytest.raises(ValueError, match="valid: longest, shortest"):
        hypernym_chain(DOG, "first", wn)


# ---------------------------------------------------------------------------------------------------------------
# Trees
# ---------------------------------------------------------------------------------------------------------------

def test_small_tree_collapses_chains_and_keeps_classes_as_leaves(wn) -> None:
    classes = [DOG, CHIHUAHUA, JAPANESE_SPANIEL, TABBY, CHIHUAHUA]  # the duplicate is ignored
    tree = wordnet_tree(classes, wordnet=wn)
    group = DOG + GROUP_SUFFIX
    # carnivore is the first branching point; dog is a class *and* the ancestor of two classes, so its place is
    # taken by a group node with the dog leaf beside toy dog (kept: it branches into two classes); canine,
    # placental, mammal, ..., entity are single-child chains and collapse away.
    assert sorted(tree.edges()) == sorted([
        (CARNIVORE, group), (group, DOG), (group, TOY_DOG), (TOY_DOG, CHIHUAHUA), (TOY_DOG, JAPANESE_SPANIEL),
        (CARNIVORE, TABBY)])
    assert tree.root == CARNIVORE
    assert sorted(tree.leaves) == sorted({DOG, CHIHUAHUA, JAPANESE_SPANIEL, TABBY})
    assert tree.names[group] == "dog (group)" and tree.names[CHIHUAHUA] == "Chihuahua"
    assert tree.distance(DOG, CHIHUAHUA) == 3
    # Without the group node, dog stays internal.
    plain = wordnet_tree(classes, classes_as_leaves=False, wordnet=wn)
    assert sorted(plain.edges()) == sorted([
        (CARNIVORE, DOG), (DOG, TOY_DOG), (TOY_DOG, CHIHUAHUA), (TOY_DOG, JAPANESE_SPANIEL), (CARNIVORE, TABBY)])
    # Without collapsing, every synset on the chosen paths is kept, up to entity.
    full = wordnet_tree(classes, collapse_chains=False, classes_as_leaves=False, wordnet=wn)
    assert full.root == ENTITY
    assert full.ancestors(CHIHUAHUA)[::-1] == hypernym_chain(CHIHUAHUA, wordnet=wn)[:-1]


def test_tree_errors(wn) -> None:
    with pytest.raises(ValueError, match="single node"):
        wordnet_tree([DOG], wordnet=wn)
    assert wordnet_tree([DOG], collapse_chains=False, wordnet=wn).depth(DOG) == 13
    with pytest.raises(ValueError, match="at least one"):
        wordnet_tree([], wordnet=wn)
    with pytest.raises(ValueError, match="valid: longest"):
        wordnet_tree([DOG, TABBY], hypernym_choice="random", wordnet=wn)
    with pytest.raises(ValueError, match="n99999999"):
        wordnet_tree([DOG, "n99999999"], wordnet=wn)


@pytest.fixture(scope="module")
def hycoclip_tree() -> Tree:
    if not IMAGENET_ISA.exists():
        pytest.skip(f"{IMAGENET_ISA} not found")
    return Tree.from_edges_file(IMAGENET_ISA)


def _agreement(ours: Tree, theirs: Tree, pairs: list[tuple[str, str]]) -> tuple[float, float]:
    same_lca = np.mean([ours.lca(a, b) == theirs.lca(a, b) for a, b in pairs])
    tie_ours = np.array([ours.distance(a, b) for a, b in pairs], dtype=float)
    tie_theirs = np.array([theirs.distance(a, b) for a, b in pairs], dtype=float)
    return float(same_lca), float(np.corrcoef(tie_ours, tie_theirs)[0, 1])


def test_imagenet_tree_agrees_with_hycoclip(wn, hycoclip_tree: Tree) -> None:
    leaves = hycoclip_tree.leaves
    tree = wordnet_tree(leaves, wordnet=wn)
    assert sorted(tree.leaves) == sorted(leaves)  # all 1,000 classes, all leaves, nothing else
    assert all(re.fullmatch(r"n\d{8}", n) for n in tree.nodes)  # ImageNet-1k has no class above another class
    assert all(len(tree.children[n]) >= 2 for n in tree.nodes if tree.children[n])  # chains collapsed
    # WordNet puts street sign, traffic light and bubble under abstraction, so the root stays entity; HyCoCLIP's
    # tree is rooted at physical_entity.
    assert tree.root == ENTITY and hycoclip_tree.root == PHYSICAL_ENTITY

    rng = random.Random(0)
    pairs = [tuple(rng.sample(leaves, 2)) for _ in range(20_000)]
    same_lca, tie_corr = _agreement(tree, hycoclip_tree, pairs)
    same_parent = np.mean([tree.parent[leaf] == hycoclip_tree.parent[leaf] for leaf in leaves])
    print(f"\nagreement with HyCoCLIP's tree on 20,000 random class pairs: same LCA {same_lca:.4f}, "
          f"TIE correlation {tie_corr:.4f}; same parent {same_parent:.3f}")
    # Measured on all 499,500 pairs: same LCA 0.9815, TIE correlation 0.9936; same parent 0.986.
    assert same_lca > 0.97
    assert tie_corr > 0.99
    assert same_parent > 0.97
    # Hand-checkable: chihuahua has the same ancestors in both trees, apart from the extra root.
    assert tree.ancestors(CHIHUAHUA) == hycoclip_tree.ancestors(CHIHUAHUA) + [ENTITY]

    # The hierarchy metrics of the same predictions nearly agree on the two trees.
    true = [rng.choice(leaves) for _ in range(5000)]
    pred = [t if i % 2 else rng.choice(leaves) for i, t in enumerate(true)]
    for convention in ("hycoclip", "inclusive"):
        ours = hierarchy_metrics(tree, true, pred, convention)
        theirs = hierarchy_metrics(hycoclip_tree, true, pred, convention)
        assert ours["top1"] == theirs["top1"]
        assert ours["tie"] == pytest.approx(theirs["tie"], rel=0.05)
        assert ours["lca"] == pytest.approx(theirs["lca"], rel=0.05)

    # The other hypernym choice agrees less (measured: 0.870 same LCA, TIE correlation 0.84 on all pairs): the
    # default is the right one for HyCoCLIP comparisons.
    other_same_lca, _ = _agreement(wordnet_tree(leaves, hypernym_choice="shortest", wordnet=wn), hycoclip_tree, pairs)
    assert other_same_lca < same_lca - 0.05

