"""Parser tests build parsers from the registry: load every component package first, so a
module also runs alone."""

from dataflows import registry

registry.load_all()
