"""``/v1/meta`` and ``/v1/meta/<object_id>`` (deprecated in FactoryTX, kept for compatibility)."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.params import FromPath, FromQuery

from api import meta
from api.errors import ok


class MetaController(Controller):
    """Objects, subtypes and JSON schemas, generated from the component registries."""

    path = "/v1/meta"

    @get("/", sync_to_thread=False, operation_id="get_meta", summary="List the object types")
    def objects(self) -> Any:
        """Which objects and subtypes exist (deprecated in FactoryTX)."""
        return ok(meta.objects())

    @get("/{object_id:str}", sync_to_thread=False, operation_id="get_meta_object",
         summary="Describe an object subtype")
    def describe(self, object_id: FromPath[str], subtype: FromQuery[str | None] = None) -> Any:
        """Schema and empty template of one object subtype (deprecated in FactoryTX);
        an unknown object or subtype is a 404."""
        return ok(meta.describe_object(object_id, subtype))
