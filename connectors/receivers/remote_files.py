"""Config specs of the remote file receivers: ``smb``, ``s3``, ``azure_data_lake``, ``azure_data_lake_gen2``.

This version validates their configs (so FactoryTX configs using them load and can be
edited) but cannot run them yet: :func:`dataflows.config.load` with ``runnable=True``
refuses them with an error naming the protocol. Connection keys follow the table in
``shared/specs/factorytx-digest.md`` (Receivers, Connection keys).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from connectors.receivers._files import FileReceiver
from connectors.registry import receivers
from dataflows.config import Port, describe


class _Connection(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    connection_name: Annotated[str | None, describe("Name of the connection.")] = None


class SmbConnection(_Connection, kw_only=True):
    """A Windows (SMB) share."""

    host: Annotated[str, describe("Hostname or IP address of the server.")]
    username: Annotated[str | None, describe("User to log in as.")] = None
    password: Annotated[str | None, describe("Password of the user.", secret=True)] = None
    shared_folder: Annotated[str, describe("Share and folder, e.g. '/data/folder-with-files'.")]
    port: Annotated[Port | None, describe("TCP port.")] = None
    domain: Annotated[str | None, describe("Windows domain.")] = None


class S3Connection(_Connection, kw_only=True):
    """An S3 bucket."""

    endpoint_url: Annotated[str | None, describe("S3 endpoint.")] = None
    access_key_id: Annotated[str | None, describe("Access key id.")] = None
    secret_access_key: Annotated[str | None, describe("Secret access key.", secret=True)] = None
    bucket: Annotated[str, describe("Bucket name.")]
    regex: Annotated[str | None, describe("Regular expression on object keys.")] = None


class AzureDataLakeConnection(_Connection, kw_only=True):
    """An Azure Data Lake (gen1) store."""

    tenant_id: Annotated[str, describe("Azure AD tenant.")]
    client_id: Annotated[str, describe("Service principal id.")]
    client_secret: Annotated[str, describe("Service principal secret.", secret=True)]
    store_name: Annotated[str, describe("Data Lake store name.")]
    data_directory: Annotated[str, describe("Directory in the store.")] = "/"
    max_files_per_request: Annotated[int, describe("Files listed per request.", ge=1)] = 100


class AzureDataLakeGen2Connection(_Connection, kw_only=True):
    """An Azure Data Lake gen2 container."""

    connection_str: Annotated[str, describe("Storage account connection string.", secret=True)]
    storage_container_name: Annotated[str, describe("Container.")]
    data_directory: Annotated[str, describe("Directory in the container.")] = "/"


@receivers.register
class SmbReceiver(FileReceiver, tag="smb", kw_only=True):
    """Files on a Windows share (config only in this version)."""

    title: ClassVar[str] = "SMB"

    runnable: ClassVar[bool] = False
    connections: Annotated[list[SmbConnection], describe("Shares.", min_length=1)]


@receivers.register
class S3Receiver(FileReceiver, tag="s3", kw_only=True):
    """Objects in S3 buckets (config only in this version)."""

    runnable: ClassVar[bool] = False
    connections: Annotated[list[S3Connection], describe("Buckets.", min_length=1)]


@receivers.register
class AzureDataLakeReceiver(FileReceiver, tag="azure_data_lake", kw_only=True):
    """Files in Azure Data Lake gen1 (config only in this version)."""

    runnable: ClassVar[bool] = False
    connections: Annotated[list[AzureDataLakeConnection], describe("Stores.", min_length=1)]


@receivers.register
class AzureDataLakeGen2Receiver(FileReceiver, tag="azure_data_lake_gen2", kw_only=True):
    """Files in Azure Data Lake gen2 (config only in this version)."""

    runnable: ClassVar[bool] = False
    connections: Annotated[list[AzureDataLakeGen2Connection], describe("Containers.", min_length=1)]
