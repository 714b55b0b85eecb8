"""Typed options with their documentation: dataclass fields that carry their flag's help, group and choices.

The configs (:class:`euclip.model.ModelConfig`, :class:`euclip.train.config.TrainConfig`, the evaluation
settings) declare each option once, with :func:`option`; ``euclip.cli.flags`` turns them into argparse flags
whose help shows the real default. Nothing here imports argparse: the library stays usable without the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["option", "option_help"]

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, help: str, group: str | None = None,
           choices: Sequence[str] | Callable[[], Sequence[str]] | None = None, metavar: str | None = None,
           flags: tuple[str, ...] | None = None, default_text: str | None = None,
           default_factory: Callable[[], Any] | Any = _MISSING, cli: bool = True) -> Any:
    """A dataclass field documented for the command line.

    Args:
        default, default_factory: as :func:`dataclasses.field`.
        help: one sentence for ``--help`` (the default is appended automatically).
        group: the ``--help`` section (``None``: the config's own default group).
        choices: valid values, or a function returning them (registries fill up at import time).
        metavar: the placeholder in ``--help``.
        flags: the flag names (default ``--field-name``).
        default_text: how ``--help`` states the default when the value alone would mislead (e.g. a default
            that depends on other options).
        cli: False for fields that are not flags (set by the program, not the user).
    """
    metadata = {"help": help, "group": group, "choices": choices, "metavar": metavar, "flags": flags,
                "default_text": default_text, "cli": cli}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def option_help(field: dataclasses.Field) -> str:
    """The help sentence of ``field`` with its default: ``"… (default: 0.1)"``."""
    meta = field.metadata
    text = meta.get("help", "")
    shown = meta.get("default_text")
    if shown is None:
        value = field.default_factory() if field.default is _MISSING and field.default_factory is not _MISSING \
            else field.default
        shown = _show(value)
    return f"{text} (default: {shown})" if shown else text


def _show(value: Any) -> str:
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str):
        return repr(value) if value.strip() != value or not value else value
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
