"""WordNet 3.0 is-a trees over classes named by WordNet ids (ImageNet folder names such as ``n01440764``), offline.

WordNet is read with nltk's :class:`~nltk.corpus.reader.wordnet.WordNetCorpusReader` and is never downloaded.
:func:`get_wordnet` looks for, in order:

1. nltk's own ``corpora/wordnet`` (or ``wordnet.zip``) on ``nltk.data.path``, as installed by
   ``python -m nltk.downloader wordnet``;
2. the system's WordNet 3.0 database: Debian/Ubuntu's ``apt-get install wordnet-base`` puts it in
   ``/usr/share/wordnet`` (``$WNSEARCHDIR`` and ``$WNHOME/dict`` are honoured too). nltk cannot read that folder
   as it is: it lacks the ``lexnames`` file nltk loads first, and recent nltk versions only open corpora below a
   folder on ``nltk.data.path``. So on first use the files are *copied* (not linked) to
   ``<data dir>/corpora/wordnet``, ``lexnames`` is written next to them, and ``<data dir>`` is put on
   ``nltk.data.path``. ``<data dir>`` is ``$EUCLIP_NLTK_DATA`` if set, else ``$XDG_CACHE_HOME/euclip/nltk_data``
   (``~/.cache/euclip/nltk_data``). Debian's ``index.sense`` (package ``wordnet-sense-index``) is copied too when
   installed, but not needed.

If neither is there, :class:`WordNetUnavailableError` says how to install one.

A wnid is ``"n"`` followed by the 8-digit byte offset of a noun synset in WordNet 3.0's ``data.noun``; other
WordNet versions number synsets differently, so only WordNet 3.0 is accepted.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nltk
from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

from euclip.tree import Tree

__all__ = [
    "ENV_DATA_DIR", "INSTALL_HINT", "LEXNAMES", "HYPERNYM_CHOICES", "GROUP_SUFFIX", "WordNetUnavailableError",
    "default_data_dir", "find_system_wordnet", "lexnames_text", "prepare_wordnet_data", "load_wordnet", "get_wordnet",
    "wordnet_available", "synset_from_wnid", "wnid_of", "wnid_to_name", "hypernym_chain", "wordnet_tree",
]

#: Environment variable naming the nltk data folder that receives the copied WordNet files.
ENV_DATA_DIR = "EUCLIP_NLTK_DATA"

INSTALL_HINT = (
    "WordNet 3.0 is not installed. Offline, install Debian/Ubuntu's copy with `apt-get install wordnet-base` "
    "(euclip copies it into an nltk data folder on first use); when online, nltk's own copy can be installed with "
    "`python -m nltk.downloader wordnet`."
)

#: WordNet 3.0's 45 lexicographer files, in file-number order (00..44), from the lexnames(5WN) manual page.
LEXNAMES: tuple[str, ...] = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)

# lexnames(5WN): the third field is the syntactic category, 1 NOUN, 2 VERB, 3 ADJECTIVE, 4 ADVERB.
_SYNTACTIC_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Files nltk's reader opens when it loads (besides lexnames, which we write).
_REQUIRED_FILES = tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("adj", "adv", "noun", "verb")) + (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc")
# Files nltk opens only for some queries (sense keys, lemma counts): copied when the system has them. Debian ships
# index.sense in a separate package, wordnet-sense-index.
_OPTIONAL_FILES = ("index.sense", "cntlist.rev")

_WNID = re.compile(r"n(\d{8})")

#: Valid ``hypernym_choice`` values of :func:`wordnet_tree` and :func:`hypernym_chain`.
HYPERNYM_CHOICES: tuple[str, ...] = ("longest", "shortest")

#: Suffix of the id of the internal node that stands for a class's whole subtree when that class is also an
#: ancestor of another class (see :func:`wordnet_tree`).
GROUP_SUFFIX = ".group"


class WordNetUnavailableError(RuntimeError):
    """No usable WordNet 3.0 database was found; the message says how to install one."""


# ----------------------------------------------------------------------------------------------------------------
# Finding and loading WordNet
# ----------------------------------------------------------------------------------------------------------------

def default_data_dir() -> Path:
    """The nltk data folder that receives the copied WordNet files: ``$EUCLIP_NLTK_DATA``, else a user cache."""
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "euclip" / "nltk_data"


def find_system_wordnet() -> Path | None:
    """The folder of a system-wide WordNet database (Debian's ``wordnet-base``), or ``None``.

    Looks in ``$WNSEARCHDIR``, ``$WNHOME/dict``, ``/usr/share/wordnet`` and ``/usr/local/WordNet-3.0/dict`` (the
    WordNet library's own default) and returns the first that holds every file nltk's reader needs.
    """
    candidates = []
    if os.environ.get("WNSEARCHDIR"):
        candidates.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        candidates.append(Path(os.environ["WNHOME"]) / "dict")
    candidates += [Path("/usr/share/wordnet"), Path("/usr/local/WordNet-3.0/dict")]
    for folder in candidates:
        if all((folder / name).is_file() for name in _REQUIRED_FILES):
            return folder
    return None


def lexnames_text() -> str:
    """The ``lexnames`` file nltk's reader expects: ``NN<TAB>name<TAB>category`` per line, as in lexnames(5WN)."""
    return "".join(f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def _write_atomically(target: Path, write: Any) -> None:
    # Write to a temporary file in the same folder, then rename: concurrent processes (parallel test workers, data
    # loader workers) never see a half-written file, and whichever finishes last wins with identical content.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def prepare_wordnet_data(source: str | Path | None = None, data_dir: str | Path | None = None) -> Path:
    """Make an nltk-readable copy of a system WordNet database; cheap when the copy is already up to date.

    Args:
        source: folder of the WordNet database files (``data.noun``, ``index.noun``, ...); defaults to
            :func:`find_system_wordnet`.
        data_dir: nltk data folder to copy into; defaults to :func:`default_data_dir`.

    Returns:
        The corpus folder, ``<data_dir>/corpora/wordnet``.

    Raises:
        WordNetUnavailableError: no source folder was given or found.
    """
    source = Path(source) if source is not None else find_system_wordnet()
    if source is None or not all((source / name).is_file() for name in _REQUIRED_FILES):
        raise WordNetUnavailableError(INSTALL_HINT)
    corpus = Path(data_dir if data_dir is not None else default_data_dir()).expanduser() / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for name in _REQUIRED_FILES + _OPTIONAL_FILES:
        src, dst = source / name, corpus / name
        if not src.is_file():
            continue
        # Copy (nltk will not follow a link out of its data folder) when missing or when the system copy changed.
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            _write_atomically(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
    lexnames = corpus / "lexnames"
    if not lexnames.is_file() or lexnames.read_text() != lexnames_text():
        _write_atomically(lexnames, lambda tmp: tmp.write_text(lexnames_text()))
    return corpus


class _OfflineWordNetReader(WordNetCorpusReader):
    """nltk's WordNet reader, minus a load-time step that needs a file Debian's ``wordnet-base`` lacks."""

    def map_wn(self, version: str = "wordnet") -> dict[str, str] | None:
        # At load time nltk maps the synsets of the "wordnet" corpus to those of the loaded one through sense keys
        # read from index.sense (packaged separately by Debian). The map is only used to attach Open Multilingual
        # WordNet data, which we never load, and is the identity for WordNet 3.0 anyway.
        if version == "wordnet" and self.get_version() == "3.0":
            return None
        return super().map_wn(version)


def _add_to_nltk_path(data_dir: Path) -> None:
    # First, so that nltk.data.find and nltk.corpus.wordnet in this process find the same copy we read.
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))


def load_wordnet(root: str | Path | Any) -> WordNetCorpusReader:
    """A WordNet 3.0 reader over one corpus folder (e.g. the one :func:`prepare_wordnet_data` returns).

    Unlike a plain ``WordNetCorpusReader``, it does not need ``index.sense``. A folder given by path is made
    readable first: recent nltk versions only open corpora below a folder on ``nltk.data.path``, so the nltk data
    folder above it (``<data dir>`` of ``<data dir>/corpora/wordnet``; else the folder itself) is put there.

    Args:
        root: the corpus folder, or an nltk path pointer (such as ``nltk.data.find("corpora/wordnet")``).

    Raises:
        WordNetUnavailableError: the folder holds another WordNet version.
        OSError: a file the reader needs is missing.
    """
    if isinstance(root, (str, Path)):
        corpus = Path(root).expanduser().resolve()
        _add_to_nltk_path(corpus.parent.parent if corpus.parent.name == "corpora" else corpus)
        root = str(corpus)
    with warnings.catch_warnings():
        # "The multilingual functions are not available": expected, no Open Multilingual WordNet is loaded.
        warnings.simplefilter("ignore", UserWarning)
        reader = _OfflineWordNetReader(root, None)
    version = reader.get_version()
    if version != "3.0":
        raise WordNetUnavailableError(
            f"found WordNet {version} at {root}, but wnids are WordNet 3.0 offsets. {INSTALL_HINT}")
    return reader


@functools.lru_cache(maxsize=1)
def get_wordnet() -> WordNetCorpusReader:
    """The WordNet 3.0 reader (loaded once per process, a few seconds); see the module docstring for the search.

    Returns:
        An nltk ``WordNetCorpusReader``.

    Raises:
        WordNetUnavailableError: neither nltk's WordNet data nor a system WordNet 3.0 database is installed.
    """
    try:
        own = nltk.data.find("corpora/wordnet")
    except LookupError:
        own = None
    if own is not None:
        try:
            return load_wordnet(own)
        except (OSError, AssertionError, WordNetUnavailableError):
            pass  # Incomplete or another version: fall back to the system copy below.
    return load_wordnet(prepare_wordnet_data())


def wordnet_available() -> bool:
    """Whether :func:`get_wordnet` succeeds (it loads WordNet, so the first call takes a few seconds)."""
    try:
        get_wordnet()
    except WordNetUnavailableError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# wnids and synsets
# ----------------------------------------------------------------------------------------------------------------

def are_wnids(names: Sequence[str]) -> bool:
    """Whether every name is a wnid (``"n"`` and 8 digits), e.g. ImageNet's class folders."""
    return bool(names) and all(isinstance(n, str) and _WNID.fullmatch(n) for n in names)


def synset_from_wnid(wnid: str, wordnet: WordNetCorpusReader | None = None) -> Synset:
    """The noun synset of a wnid such as ``"n02084071"`` (dog).

    Args:
        wnid: ``"n"`` followed by 8 digits.
        wordnet: the reader; defaults to :func:`get_wordnet`.

    Raises:
        ValueError: malformed wnid, or no noun synset at that offset.
    """
    match = _WNID.fullmatch(wnid) if isinstance(wnid, str) else None
    if match is None:
        raise ValueError(f"{wnid!r} is not a wnid: expected 'n' followed by 8 digits, e.g. 'n02084071'")
    wordnet = wordnet if wordnet is not None else get_wordnet()
    with warnings.catch_warnings():
        # For an offset that does not start a synset nltk warns and returns None; the ValueError below says it.
        warnings.simplefilter("ignore", UserWarning)
        synset = wordnet.synset_from_pos_and_offset("n", int(match.group(1)))
    if synset is None:
        raise ValueError(f"wnid {wnid!r} names no WordNet 3.0 noun synset")
    return synset


def wnid_of(synset: Synset) -> str:
    """The wnid of a noun synset, ``"n%08d" % offset``."""
    if synset.pos() != "n":
        raise ValueError(f"{synset.name()} is not a noun synset; wnids name noun synsets")
    return f"n{synset.offset():08d}"


def wnid_to_name(wnid: str, wordnet: WordNetCorpusReader | None = None) -> str:
    """Human-readable name of a wnid: its synset's first lemma, underscores as spaces (``n02084071`` -> ``dog``)."""
    return synset_from_wnid(wnid, wordnet).lemma_names()[0].replace("_", " ")


class _ParentRule:
    """Picks one hypernym per synset, so that the union of the chosen edges is a tree.

    Choosing per synset (rather than one whole path per class) keeps two classes that share an ancestor from
    reaching it through different routes.
    """

    def __init__(self, choice: str):
        if choice not in HYPERNYM_CHOICES:
            raise ValueError(f"unknown hypernym_choice {choice!r}; valid: {', '.join(HYPERNYM_CHOICES)}")
        self.choice = choice
        self._height: dict[Synset, int] = {}  # edges on the longest hypernym path up to a root
        self._parent: dict[Synset, Synset | None] = {}

    @staticmethod
    def _hypernyms(synset: Synset) -> list[Synset]:
        # Instance synsets (proper nouns) have only instance hypernyms; treat both as is-a. Sorted by offset because
        # nltk keeps a synset's pointers in a set, so its order changes from one process to the next (string hash
        # randomisation): ties must not depend on it.
        return sorted(synset.hypernyms() + synset.instance_hypernyms(), key=lambda h: h.offset())

    def height(self, synset: Synset) -> int:
        # Memoised iteratively rather than with Synset.max_depth(), which recomputes shared ancestors each time.
        stack = [synset]
        while stack:
            s = stack[-1]
            if s in self._height:
                stack.pop()
                continue
            pending = [h for h in self._hypernyms(s) if h not in self._height]
            if pending:
                stack.extend(pending)
                continue
            self._height[s] = 1 + max((self._height[h] for h in self._hypernyms(s)), default=-1)
            stack.pop()
        return self._height[synset]

    def parent(self, synset: Synset) -> Synset | None:
        if synset not in self._parent:
            hypernyms = self._hypernyms(synset)
            if not hypernyms:
                chosen = None
            elif self.choice == "longest":
                # max/min return the first of equals: ties go to the lowest offset.
                chosen = max(hypernyms, key=self.height)
            else:
                chosen = min(hypernyms, key=lambda h: h.min_depth())
            self._parent[synset] = chosen
        return self._parent[synset]

    def chain(self, synset: Synset) -> list[Synset]:
        """``[root, ..., synset]``."""
        chain = [synset]
        while (p := self.parent(chain[-1])) is not None:
            chain.append(p)
        return chain[::-1]


def hypernym_chain(wnid: str, hypernym_choice: str = "longest",
                   wordnet: WordNetCorpusReader | None = None) -> list[str]:
    """The wnids on one hypernym path from WordNet's root (``n00001740``, entity) down to ``wnid``, unpruned.

    Args:
        wnid: a noun wnid.
        hypernym_choice: which hypernym to follow where a synset has several; see :func:`wordnet_tree`.
        wordnet: the reader; defaults to :func:`get_wordnet`.
    """
    wordnet = wordnet if wordnet is not None else get_wordnet()
    return [wnid_of(s) for s in _ParentRule(hypernym_choice).chain(synset_from_wnid(wnid, wordnet))]


# ----------------------------------------------------------------------------------------------------------------
# Trees
# ----------------------------------------------------------------------------------------------------------------

def wordnet_tree(wnids: Sequence[str], *, hypernym_choice: str = "longest", collapse_chains: bool = True,
                 classes_as_leaves: bool = True, wordnet: WordNetCorpusReader | None = None) -> Tree:
    """The WordNet 3.0 is-a tree over some classes, pruned to resemble HyCoCLIP's ImageNet tree.

    Construction:

    1. **One parent per synset.** WordNet is a DAG: a synset may have several hypernyms (dog is both a canine and
       a domestic animal). Each synset on the way up keeps one, by ``hypernym_choice``:

       - ``"longest"`` (default): the hypernym with the longest path to the root, so every class hangs on one of
         its longest (most detailed) hypernym paths. This reproduces HyCoCLIP's ImageNet-1k tree best: 98.2%
         of the 499,500 class pairs get the same lowest common ancestor and tree distances correlate at 0.994,
         against 87.0% / 0.84 for ``"shortest"``.
       - ``"shortest"``: the hypernym with the smallest minimum depth to the root.

       Ties go to the hypernym with the lowest offset (not to nltk's order of hypernyms, which varies from run to
       run), so the tree is the same in every process.

       The union of the chosen edges from every class up to the root (``entity``, ``n00001740``) is a tree.
    2. **Classes stay leaves** (``classes_as_leaves``, default on). If a class is also an ancestor of another class
       (e.g. both ``dog`` and ``toy dog`` are classes), the class keeps its wnid as a *leaf*, and its place in the
       tree is taken by a new internal node ``wnid + GROUP_SUFFIX`` (``"n02084071.group"``, named ``"dog (group)"``)
       whose children are the class's leaf and the subtrees of its descendant classes. Hierarchy metrics then see
       every class as a leaf (HyCoCLIP's convention assumes leaves), while the tree still says a toy dog is a dog:
       dog and toy dog are siblings (tree distance 2), not identical. ImageNet-1k has no such pair.
    3. **Chains collapse** (``collapse_chains``, default on). Every internal node that is not a class and has a
       single child is removed and its child attached to its parent, repeatedly, the root included (so
       ``entity -> physical_entity`` collapses when all classes are physical entities). Only branching points and
       classes remain, as in HyCoCLIP's tree, so tree distances count branchings rather than WordNet's uneven
       chain lengths.

    Args:
        wnids: class wnids (duplicates are ignored; order fixes the order of children).
        hypernym_choice: ``"longest"`` or ``"shortest"``.
        collapse_chains: remove single-child non-class internal nodes.
        classes_as_leaves: keep classes that are ancestors of other classes as leaves (step 2).
        wordnet: the reader; defaults to :func:`get_wordnet`.

    Returns:
        A :class:`~euclip.tree.Tree` whose node ids are wnids (plus ``GROUP_SUFFIX`` nodes, step 2) and whose
        names are the synsets' first lemmas with spaces for underscores.

    Raises:
        ValueError: no wnids, a malformed or unknown wnid, an unknown ``hypernym_choice``, or a pruned tree with a
            single node (one class, collapsed).
        WordNetUnavailableError: WordNet is not installed.
    """
    rule = _ParentRule(hypernym_choice)  # validates the choice before WordNet loads
    classes = list(dict.fromkeys(wnids))
    if not classes:
        raise ValueError("wordnet_tree needs at least one wnid")
    wordnet = wordnet if wordnet is not None else get_wordnet()
    synsets = {w: synset_from_wnid(w, wordnet) for w in classes}

    # Step 1: children lists, in order of first appearance (classes in input order, each chain top-down).
    children: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for w in classes:
        chain = rule.chain(synsets[w])
        for synset in chain:
            node = wnid_of(synset)
            if node not in names:
                names[node] = synset.lemma_names()[0].replace("_", " ")
                children[node] = []
        for up, down in zip(chain, chain[1:]):
            if wnid_of(down) not in children[wnid_of(up)]:
                children[wnid_of(up)].append(wnid_of(down))
    root = wnid_of(rule.chain(synsets[classes[0]])[0])

    # Step 2: a class with descendants becomes a group node holding the class as a leaf.
    if classes_as_leaves:
        for w in classes:
            if children[w]:
                group = w + GROUP_SUFFIX
                # Re-point w's parent to the group before the group's own list (which must hold w) exists.
                for kids in children.values():
                    kids[:] = [group if k == w else k for k in kids]
                children[group] = [w] + children[w]
                children[w] = []
                names[group] = f"{names[w]} (group)"
                root = group if root == w else root

    # Step 3: collapse single-child chains of non-class nodes.
    keep = set(classes)

    def settle(node: str) -> str:
        # Follow a chain of removable nodes down to the first node that stays.
        while collapse_chains and node not in keep and len(children[node]) == 1:
            node = children[node][0]
        return node

    edges: list[tuple[str, str]] = []
    root = settle(root)
    stack = [root]
    while stack:
        node = stack.pop()
        kept = [settle(child) for child in children[node]]
        edges.extend((node, child) for child in kept)
        stack.extend(reversed(kept))
    if not edges:
        raise ValueError(f"the pruned tree of {classes} is a single node; give at least two classes or "
                         "collapse_chains=False")
    return Tree(edges, names=names)
