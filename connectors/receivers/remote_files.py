"""Config specs of the remote file receivers: ``smb``, ``s3``, ``azure_data_lake``, ``azure_data_lake_gen2``.

This version validates their configs (so FactoryTX configs using them load and can be
edited) but cannot run them yet: :func:`dataflows.config.load` with ``runnable=True``
refuses them with an error naming the protocol. Connection keys follow the table in
``shared/specs/factorytx-digest.md`` (Receivers, Connection keys).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from connectors.receivers._files import FileReceiver, file_template
from dataflows.registry import receivers
from dataflows.sdk import Port, Template, describe


def _example(protocol: str, connection: dict[str, Any]) -> dict[str, Any]:
    return {"data_receiver_name": f"{protocol}_files", "protocol": protocol, "poll_interval": 30,
            "connections": [connection], "parsers": [{"parser_name": "csv", "parser_type": "csv"}],
            "streams": [{"asset": "spraypaint", "stream_type": "csv", "file_filter": ["*.csv"]}]}


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
    """Reads files from Windows (SMB) shares (config only in this version)."""

    title: ClassVar[str] = "SMB"
    template: ClassVar[Template] = file_template(
        "smb", "SMB", "A template for collecting data from files on a Microsoft Windows Network", {
            "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
            "username": "<Please input the username for login>",
            "password": "<Please input the password for login>",
            "shared_folder": "/data/folder-with-files",
        })
    example: ClassVar[dict[str, Any]] = _example("smb", {
        "host": "fileserver.plant.local", "username": "collector", "password": "${SMB_PASSWORD}",
        "shared_folder": "/exports/spraypaint"})

    runnable: ClassVar[bool] = False
    connections: Annotated[list[SmbConnection], describe("Shares.", min_length=1)]


@receivers.register
class S3Receiver(FileReceiver, tag="s3", kw_only=True):
    """Reads objects from S3 buckets (config only in this version)."""

    template: ClassVar[Template] = file_template(
        "s3", "S3", "A template for collecting data from files in Amazon S3 buckets", {
            "endpoint_url": "<Please input the S3 endpoint (e.g. https://s3.us-east-1.amazonaws.com)>",
            "access_key_id": "<Please input the access key id>",
            "secret_access_key": "<Please input the secret access key>",
            "bucket": "<Please input the bucket name>",
        })
    example: ClassVar[dict[str, Any]] = _example("s3", {
        "endpoint_url": "https://s3.us-east-1.amazonaws.com", "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "${AWS_SECRET_ACCESS_KEY}", "bucket": "plant-exports"})

    runnable: ClassVar[bool] = False
    connections: Annotated[list[S3Connection], describe("Buckets.", min_length=1)]


@receivers.register
class AzureDataLakeReceiver(FileReceiver, tag="azure_data_lake", kw_only=True):
    """Reads files from Azure Data Lake Storage Gen1 (config only in this version)."""

    template: ClassVar[Template] = file_template(
        "azure_data_lake", "Azure Data Lake",
        "A template for collecting data from files in Azure Data Lake Storage Gen1", {
            "tenant_id": "<Please input the Azure AD tenant id>",
            "client_id": "<Please input the service principal's client id>",
            "client_secret": "<Please input the service principal's secret>",
            "store_name": "<Please input the Data Lake store name>",
            "data_directory": "/",
        })
    example: ClassVar[dict[str, Any]] = _example("azure_data_lake", {
        "tenant_id": "00000000-0000-0000-0000-000000000000",
        "client_id": "11111111-1111-1111-1111-111111111111", "client_secret": "${AZURE_CLIENT_SECRET}",
        "store_name": "plantlake", "data_directory": "/spraypaint"})

    runnable: ClassVar[bool] = False
    connections: Annotated[list[AzureDataLakeConnection], describe("Stores.", min_length=1)]


@receivers.register
class AzureDataLakeGen2Receiver(FileReceiver, tag="azure_data_lake_gen2", kw_only=True):
    """Reads files from Azure Data Lake Storage Gen2 (config only in this version)."""

    template: ClassVar[Template] = file_template(
        "azure_data_lake_gen2", "Azure Data Lake Gen2",
        "A template for collecting data from files in Azure Data Lake Storage Gen2", {
            "connection_str": "<Please input the storage account connection string>",
            "storage_container_name": "<Please input the container name>",
            "data_directory": "/",
        })
    example: ClassVar[dict[str, Any]] = _example("azure_data_lake_gen2", {
        "connection_str": "${AZURE_STORAGE_CONNECTION_STRING}", "storage_container_name": "exports",
        "data_directory": "/spraypaint"})

    runnable: ClassVar[bool] = False
    connections: Annotated[list[AzureDataLakeGen2Connection], describe("Containers.", min_length=1)]
