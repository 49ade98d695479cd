"""The error answers of every operation, declared in the OpenAPI document.

Litestar documents a 400 of its own shape (``status_code``, ``detail``) and nothing else;
factoryflow answers every failure in FactoryTX's wrapper (:mod:`api.errors`). This adds to
each operation, in that wrapper's schema (``Failure``):

- 400: the body is not JSON, nests too deep or holds too long a number
  (:mod:`api.limits`), or a parameter is out of range;
- 401: ``FACTORYFLOW_API_KEY`` is set and ``X-API-Key`` is missing or wrong;
- 404: a path parameter names no log or meta object (operations with one);
- 413: the body is over ``FACTORYFLOW_API_MAX_BODY`` (operations taking one);
- 500: an internal error, logged in ``factorytx_web.log`` (the text names no exception);
  ``POST /v1/restream`` keeps its documented "Restream failed".

Implements the error side of ``shared/specs/factorytx-rest-api.txt`` (the wrapper of its
"Example Failure Response").
"""

from __future__ import annotations

from litestar.openapi.spec import (
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

FAILURE = Schema(
    type=OpenAPIType.OBJECT, required=["success", "response", "error"],
    description="FactoryTX's failure wrapper",
    properties={
        "success": Schema(type=OpenAPIType.BOOLEAN, const=False),
        "response": Schema(description="what the contract answers with the failure ({} or a text)"),
        "error": Schema(type=OpenAPIType.OBJECT, required=["code", "text"], properties={
            "code": Schema(type=OpenAPIType.INTEGER), "text": Schema(type=OpenAPIType.STRING)}),
    })

_DESCRIPTIONS = {
    "400": "Not JSON, nested deeper than 64 levels, a number over 100 characters, or a parameter out of range",
    "401": "FACTORYFLOW_API_KEY is set and X-API-Key is missing or wrong",
    "404": "No log, template or meta object of that name",
    "413": "The body is over FACTORYFLOW_API_MAX_BODY bytes",
    "500": "Internal error, logged in factorytx_web.log; error.text names no exception",
}


def declare_errors(openapi: OpenAPI) -> None:
    """Add the error answers above to every operation of ``openapi`` (in place)."""
    if openapi.components.schemas is None:
        openapi.components.schemas = {}
    openapi.components.schemas["Failure"] = FAILURE
    failure = Reference(ref="#/components/schemas/Failure")
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "post", "put", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            codes = ["400", "401", "500"] + (["404"] if "{" in path else []) + (["413"] if method != "get" else [])
            responses = operation.responses if operation.responses is not None else {}
            for code in codes:  # a handler's own declaration keeps its words (restream's 500);
                kept = responses.get(code)  # Litestar's generic 400 does not
                own = isinstance(kept, OpenAPIResponse) and code != "400"
                responses[code] = OpenAPIResponse(description=kept.description if own else _DESCRIPTIONS[code],
                                                  content={"application/json": OpenAPIMediaType(schema=failure)})
            operation.responses = responses
