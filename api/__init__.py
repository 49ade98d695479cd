"""The control API: FactoryTX's ``/v1/...`` REST endpoints (Litestar + msgspec), run by
``python -m api``, supervising the dataflow process. See ``docs/api.md``."""
