"""Registries of components, keyed by the FactoryTX config tag that selects them.

Each kind of component (receivers by ``protocol``, parsers by ``parser_type``,
transforms by ``transform_type``, transmits by ``transmit_type``) has one
:class:`Registry`. A component module registers its config Struct with
``@receivers.register`` and nothing else is edited by hand: the same registry
builds the msgspec tagged union the config decodes into, the list of accepted
tags shown in validation errors, the templates and ``/v1/meta`` of the control API,
the README's "What runs" table, and (through the Struct's own methods) the running
component.

The core names no component package. Packages of components are found through the
``factoryflow.components`` entry-point group (``pyproject.toml``): each entry names a
package whose public modules register components when imported. Importing a component
module must stay cheap: client libraries are imported when a component runs, not when
its config loads.

Implements the component model of ``shared/specs/factorytx-digest.md`` (Configuration,
Receivers, Parsers, Transforms, Transmits).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import reduce
from importlib.metadata import entry_points
from operator import or_
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

#: The entry-point group naming packages of components.
ENTRY_POINT_GROUP = "factoryflow.components"


class Registry(Generic[T]):
    """Config Structs of one component kind, keyed by their tag value.

    :param section: the config key holding this kind, e.g. ``"data_receiver"``.
    :param tag_field: the key whose value selects the Struct, e.g. ``"protocol"``.
    :param default_tag: the tag assumed when a component omits ``tag_field``
        (FactoryTX transmits without ``transmit_type`` are ``remotedatapost``).
    """

    def __init__(self, section: str, tag_field: str, default_tag: str | None = None) -> None:
        self.section = section
        self.tag_field = tag_field
        self.default_tag = default_tag
        self._by_tag: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add ``cls`` under its msgspec tag.

        :raises TypeError: ``cls`` is not tagged on this registry's field.
        :raises ValueError: another Struct already holds the tag.
        """
        config = cls.__struct_config__
        if config.tag_field != self.tag_field or not isinstance(config.tag, str):
            raise TypeError(f"{cls.__name__} must be a Struct tagged on {self.tag_field!r}")
        held = self._by_tag.get(config.tag)
        if held is not None and (held.__module__, held.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{self.tag_field} {config.tag!r} is registered twice")
        self._by_tag[config.tag] = cls
        return cls

    def unregister(self, tag: str) -> None:
        """Remove the Struct registered under ``tag`` (for tests of example connectors)."""
        self._by_tag.pop(tag, None)

    def tags(self) -> list[str]:
        """The accepted tag values, sorted."""
        load_all()
        return sorted(self._by_tag)

    def get(self, tag: str) -> type[T] | None:
        """The Struct registered for ``tag``, or ``None``."""
        load_all()
        return self._by_tag.get(tag)

    def structs(self) -> list[type[T]]:
        """Every Struct registered so far, in tag order (call :func:`load_all` first for all)."""
        return [self._by_tag[tag] for tag in sorted(self._by_tag)]

    def union(self) -> Any:
        """The msgspec tagged union of every Struct registered so far.

        :raises LookupError: nothing is registered.
        """
        structs = self.structs()
        if not structs:
            raise LookupError(f"no {self.tag_field} is registered; is factoryflow installed "
                              f"(entry points {ENTRY_POINT_GROUP!r})?")
        return reduce(or_, structs)


receivers: Registry[Any] = Registry("data_receiver", "protocol")
parsers: Registry[Any] = Registry("parsers", "parser_type")
transforms: Registry[Any] = Registry("transforms", "transform_type")
transmits: Registry[Any] = Registry("data_transmit", "transmit_type", default_tag="remotedatapost")

#: Every registry, by the config section it fills (parsers sit inside file receivers).
REGISTRIES: dict[str, Registry[Any]] = {reg.section: reg for reg in (receivers, parsers, transforms,
                                                                     transmits)}

_loaded = False
_loading = False


def load_package(package_name: str) -> None:
    """Import every public module of one package of components (idempotent)."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")


def component_packages() -> list[str]:
    """The packages of components named in the ``factoryflow.components`` entry points,
    parsers first (file receivers embed the parsers' union)."""
    names = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name != "parsers", ep.name))
    return [ep.value for ep in names]


def load_all() -> None:
    """Import every component module so that each registers itself (idempotent; a call
    made while the packages load, from a component module, returns at once)."""
    global _loaded, _loading
    if _loaded or _loading:
        return
    _loading = True
    try:
        for package_name in component_packages():
            load_package(package_name)
        _loaded = True
    finally:
        _loading = False


README_START = "<!-- what-runs: generated by `python -m dataflows.registry`; do not edit -->"
README_END = "<!-- end of what-runs -->"


def what_runs() -> str:
    """The README's "What runs" table: one row per registered component, from the registry
    (kind, tag, whether this version runs it, the first line of its docstring)."""
    load_all()
    rows = ["| kind | tag | runs | what it does |", "|---|---|---|---|"]
    for kind, reg in (("receiver", receivers), ("parser", parsers), ("transform", transforms),
                      ("transmit", transmits)):
        for cls in reg.structs():
            doc = (cls.__doc__ or "").strip().splitlines()[0].replace(" (config only in this version)", "")
            doc = doc.replace("``", "`")
            runs = "yes" if getattr(cls, "runnable", True) else "validated only"
            rows.append(f"| {kind} | `{cls.__struct_config__.tag}` | {runs} | {doc} |")
    return "\n".join([README_START, *rows, README_END])


def update_readme(text: str) -> str:
    """``text`` (the README) with its "What runs" table replaced by :func:`what_runs`.

    :raises ValueError: the README has no table markers.
    """
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError("the README has no what-runs markers")
    return text[:start] + what_runs() + text[end + len(README_END):]


if __name__ == "__main__":  # python -m dataflows.registry [--update README.md]
    import sys
    from pathlib import Path

    from dataflows import registry  # noqa: PLW0406 - components register there, not in __main__

    if sys.argv[1:2] == ["--update"]:
        path = Path(sys.argv[2])
        path.write_text(registry.update_readme(path.read_text()))
    else:
        print(registry.what_runs())
