"""Config spec of the ``remotedatapost`` transmit (Sight Machine RDPv2); not runnable in this version.

Keys per ``shared/specs/factorytx-digest.md`` (Transmits): ``base_url``, ``API_key``,
``API_key_ID``, ``timeout`` (seconds), ``poll_interval`` (max seconds between posts),
``max_request_records``, ``max_request_size_bytes`` (at most 4 MB), ``filter_stream``.
A FactoryTX transmit without ``transmit_type`` is this one.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from connectors.registry import transmits
from dataflows.config import TransmitConfig, describe


@transmits.register
class RemoteDataPost(TransmitConfig, tag="remotedatapost", kw_only=True):
    """Posts records to the Sight Machine cloud (config only in this version)."""

    runnable: ClassVar[bool] = False
    base_url: Annotated[str | None, describe("Sight Machine tenant URL.")] = None
    API_key: Annotated[str | None, describe("Edge API key.", secret=True)] = None
    API_key_ID: Annotated[str | None, describe("Edge API key id.")] = None
    timeout: Annotated[float, describe("Request timeout in seconds.", gt=0)] = 120.0
    poll_interval: Annotated[float, describe("Most seconds between posts.", gt=0)] = 30.0
    max_request_records: Annotated[int, describe("Records per post.", ge=1)] = 2000
    max_request_size_bytes: Annotated[int, describe("Bytes per post.", ge=1, le=4 * 1024 * 1024)] = (
        4 * 1024 * 1024)
