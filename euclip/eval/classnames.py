"""Class names for a folder-per-class dataset, without the sorted-order trap.

``torchvision``'s ``ImageFolder`` numbers the classes by their folder names sorted as strings, so a plain list of
names is right only in that order. A list written in any other order is silently misaligned: every image is
scored against another class's prompts (hand-written digit folders ``eight, five, four, ...`` with a names
file ``zero .. nine`` scored 9 % instead of 97.5 %). So:

* a **mapping file** (any line with a TAB) names each folder: ``folder<TAB>name`` lines; every folder must be
  named once, and nothing else;
* a **plain list** (one name per line) is refused where its order is evidently not the sorted-folder order:
  - its names are (up to case, ``_``, ``-`` and spaces) names of the folders, at other positions than those
    folders' (the folders are readable names and the list names them in another order);
  - the folders are numbers whose string order differs from their numeric order (``0 1 10 11 2 ...``): the
    list may follow either, and nothing tells which.

Refused, not warned on: a misaligned list gives plausible-looking wrong numbers, and the fix (a mapping file,
or the list in sorted-folder order) takes a minute. Lists that cannot be checked (folders named by WordNet ids,
say) are accepted as given.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["check_plain_list", "read_mapping", "resolve_classnames"]


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"class-names file not found: {path}")
    lines = [line.rstrip("\n\r") for line in path.read_text().splitlines()]
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"class-names file {path} is empty")
    return lines


def read_mapping(lines: list[str], folder_classes: list[str], source: str) -> list[str]:
    """Names in ``folder_classes`` order from ``folder<TAB>name`` lines; every folder exactly once."""
    mapping: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        folder, sep, name = line.partition("\t")
        folder, name = folder.strip(), name.strip()
        if not sep or not folder or not name:
            raise ValueError(f"{source}:{i}: expected 'folder<TAB>name' (a mapping file has a TAB on every line), "
                             f"got {line!r}")
        if folder in mapping:
            raise ValueError(f"{source}:{i}: folder {folder!r} is named twice")
        mapping[folder] = name
    unknown = [f for f in mapping if f not in folder_classes]
    missing = [f for f in folder_classes if f not in mapping]
    if unknown or missing:
        raise ValueError(f"{source}: the mapping does not match the class folders: no such folder(s) {unknown[:5]}; "
                         f"folder(s) without a name {missing[:5]}")
    return [mapping[f] for f in folder_classes]


def check_plain_list(names: list[str], folder_classes: list[str], source: str) -> None:
    """Raise ValueError when ``names`` is evidently not in sorted-folder order (see the module docstring)."""
    folders = {_normal(f): i for i, f in enumerate(folder_classes)}
    moved = [(n, i, folders[_normal(n)]) for i, n in enumerate(names)
             if _normal(n) in folders and folders[_normal(n)] != i]
    if moved:
        name, at, where = moved[0]
        raise ValueError(f"{source}: line {at + 1} names {name!r}, but that is class folder {where + 1} in sorted "
                         f"order ({len(moved)} name(s) are at other positions than their folders): a plain list must "
                         f"follow the sorted folder names ({', '.join(folder_classes[:4])}, ...); write it in that "
                         "order, or give a mapping file with 'folder<TAB>name' lines")
    if len(folder_classes) > 1 and all(f.isdigit() for f in folder_classes):
        numeric = sorted(folder_classes, key=int)
        if numeric != list(folder_classes):
            raise ValueError(f"{source}: the class folders are numbers, sorted as text ({', '.join(folder_classes[:4])}"
                             f", ...) unlike their numeric order ({', '.join(numeric[:4])}, ...); a plain list may "
                             "follow either: give a mapping file with 'folder<TAB>name' lines")


def resolve_classnames(spec: str | None, folder_classes: list[str]) -> list[str]:
    """Class names for ``folder_classes`` (sorted folder names, ImageFolder's class order).

    Args:
        spec: ``None`` (the folder names, ``_`` as spaces), ``imagenet`` (OpenCLIP's ImageNet-1k names, for the
            sorted wnid folders), or a file: a ``folder<TAB>name`` mapping, or a plain list in sorted-folder order.
        folder_classes: the class folders, sorted.

    Raises:
        ValueError: a count mismatch, a malformed mapping, or a plain list in another order (module docstring).
        FileNotFoundError: no such file.
    """
    if spec is None:
        return [c.replace("_", " ") for c in folder_classes]
    if spec == "imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        names = list(IMAGENET_CLASSNAMES)
        source = "imagenet"
    else:
        lines = _lines(Path(spec))
        if any("\t" in line for line in lines):
            return read_mapping(lines, folder_classes, spec)
        names = [line.strip() for line in lines]
        source = spec
        check_plain_list(names, folder_classes, source)
    if len(names) != len(folder_classes):
        raise ValueError(f"{len(names)} class names for {len(folder_classes)} class folders ({source})")
    return names
