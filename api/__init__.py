"""The control API (FactoryTX's ``/v1/...`` REST API on Litestar + msgspec).

Not built yet: it arrives with the control API issue. The dataflow already writes what
it will serve: logs under ``$FACTORYFLOW_HOME/log``, delivery progress in the ledger.
"""
