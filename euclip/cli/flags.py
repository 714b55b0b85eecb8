"""argparse flags generated from the typed configs (:func:`euclip.options.option` fields).

Each field becomes one flag, with its help sentence and its real default (from the dataclass, so it cannot
drift), in its group. Every flag's argparse default is ``None``, so that the caller can tell the options a user
gave from the ones left to the config (a preset, then per-logit defaults, then the dataclass, decide the rest).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable

from euclip.options import option_help

__all__ = ["add_config_flags", "config_fields", "given"]


def config_fields(cls: type) -> list[tuple[dataclasses.Field, type]]:
    """The CLI fields of dataclass ``cls`` with their resolved types, nested dataclass fields expanded in place."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out += config_fields(kind)
        elif f.metadata.get("cli", False):
            out.append((f, kind))
    return out


def _base_type(kind: type) -> type:
    """``int | None`` -> ``int``; ``tuple[float, ...]`` -> ``tuple[float, ...]``."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0]
    return kind


class _Numbers(argparse.Action):
    """A tuple of comma-separated numbers (``--ks 1,5,10``, ``--synthetic-caption-levels 0,0,1,0,0``)."""

    def __init__(self, *args, item_type: type = float, **kwargs):
        self.item_type = item_type
        super().__init__(*args, **kwargs)

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            numbers = tuple(self.item_type(part) for part in value.split(","))
        except ValueError:
            parser.error(f"argument {option_string}: expected comma-separated numbers, got {value!r}")
        setattr(namespace, self.dest, numbers)


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _add(group, f: dataclasses.Field, kind: type) -> None:
    meta = f.metadata
    names = meta.get("flags") or ("--" + f.name.replace("_", "-"),)
    kwargs: dict = {"dest": f.name, "default": None, "help": option_help(f).replace("%", "%%")}
    choices = meta.get("choices")
    if callable(choices):
        choices = choices()
    base = _base_type(kind)
    if meta.get("metavar") or (base in _METAVARS and choices is None):
        kwargs["metavar"] = meta.get("metavar") or _METAVARS[base]
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(base) is tuple:
        kwargs.update(action=_Numbers, item_type=typing.get_args(base)[0])
    else:
        kwargs["type"] = base
        if choices is not None:
            kwargs["choices"] = list(choices)
    group.add_argument(*names, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, configs: Iterable[type], group_titles: dict[str, str],
                     default_group: str | None = None, skip: Iterable[str] = ()) -> dict[str, argparse._ArgumentGroup]:
    """Add a flag for every CLI field of ``configs``, grouped by their ``group`` in the order of ``group_titles``.

    Args:
        parser: the (sub)parser.
        configs: dataclasses whose fields become flags.
        group_titles: ``{group: title}``; groups appear in this order, before ungrouped flags.
        default_group: the group of fields that name none.
        skip: field names to leave out.

    Returns:
        The argument groups, so that callers can add hand-written flags to them.
    """
    groups = {name: parser.add_argument_group(title) for name, title in group_titles.items()}
    skip = set(skip)
    for cls in configs:
        for f, kind in config_fields(cls):
            if f.name in skip:
                continue
            name = f.metadata.get("group") or default_group
            if name not in groups:
                groups[name] = parser.add_argument_group(name)
            _add(groups[name], f, kind)
    return groups


def given(args: argparse.Namespace, cls: type) -> dict:
    """The fields of ``cls`` the user gave on the command line (``None``: left to the config)."""
    names = {f.name for f, _ in config_fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
