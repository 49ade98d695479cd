"""Registries of components, keyed by the FactoryTX config tag that selects them.

Each kind of component (receivers by ``protocol``, parsers by ``parser_type``,
transforms by ``transform_type``, transmits by ``transmit_type``) has one
:class:`Registry`. A connector module registers its config Struct with
``@receivers.register`` and nothing else is edited by hand: the same registry
builds the msgspec tagged union the config decodes into, the list of accepted
tags shown in validation errors, and (through the Struct's own methods) the
running component.

Implements the component model of ``shared/specs/factorytx-digest.md``
(Configuration, Receivers, Parsers, Transforms, Transmits).
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import reduce
from operator import or_
from typing import Any, Generic, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)

#: Packages whose modules register components when imported.
COMPONENT_PACKAGES = (
    "connectors.parsers",
    "connectors.receivers",
    "connectors.transmits",
    "dataflows.transforms",
)


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
        if config.tag in self._by_tag and self._by_tag[config.tag] is not cls:
            raise ValueError(f"{self.tag_field} {config.tag!r} is registered twice")
        self._by_tag[config.tag] = cls
        return cls

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

        :raises LookupError: nothing is registered yet.
        """
        if not self._by_tag:
            raise LookupError(f"no {self.tag_field} is registered; import its package first")
        return reduce(or_, self.structs())


receivers: Registry[Any] = Registry("data_receiver", "protocol")
parsers: Registry[Any] = Registry("parsers", "parser_type")
transforms: Registry[Any] = Registry("transforms", "transform_type")
transmits: Registry[Any] = Registry("data_transmit", "transmit_type", default_tag="remotedatapost")

_loaded = False


def load_package(package_name: str) -> None:
    """Import every public module of one component package (idempotent)."""
    package = importlib.import_module(package_name)
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package_name}.{module.name}")


def load_all() -> None:
    """Import every component module so that each registers itself (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package_name in COMPONENT_PACKAGES:
        load_package(package_name)
