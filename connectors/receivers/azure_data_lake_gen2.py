"""The ``azure_data_lake_gen2`` receiver: files in an Azure Data Lake Storage Gen2 (or Blob
Storage) container, through adlfs.

Connection keys (``shared/specs/factorytx-digest.md``, Receivers): ``connection_str`` (the
storage account's connection string), ``storage_container_name``, ``data_directory`` (a
folder in the container) and ``connection_name``. Everything else (filters, parsers,
incremental reading, ``delete_completed``) is the file core's:
:mod:`connectors.receivers._files`. A file's identity is its path, size, last-modified time
and ETag.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, ClassVar

from connectors.receivers._files import (
    Connection,
    FileReceiver,
    Location,
    file_example,
    file_template,
)
from dataflows.sdk import Template, describe, receivers


class AzureDataLakeGen2Connection(Connection, kw_only=True, frozen=True):
    """A folder in an Azure Data Lake Storage Gen2 container."""

    connection_str: Annotated[str, describe("Storage account connection string.", secret=True)]
    storage_container_name: Annotated[str, describe("Container.", min_length=1)]
    data_directory: Annotated[str, describe("Folder in the container.")] = "/"

    def account_name(self) -> str:
        """The ``AccountName`` of the connection string (``devstoreaccount1`` for Azurite), or
        ``account`` when it names none."""
        parts = dict(p.split("=", 1) for p in self.connection_str.split(";") if "=" in p)
        return parts.get("AccountName", "account")


def container_location(fs: Any, container: str, directory: str, url: str) -> Location:
    """The :class:`Location` of ``directory`` (a folder, ``/`` for all) in ``container`` on
    the adlfs file system ``fs``; files are named ``<url><container>/<path>``
    (``az://<account>/<container>/<path>``)."""
    folder = directory.strip("/")
    return Location(fs, f"{container}/{folder}" if folder else container, url=url, container=container)


#: The Azure SDK's own retries and timeouts of one request (its default waits minutes on a dead
#: endpoint); the stream's backoff retries after that, and marks the stream.
CLIENT_RETRIES: dict[str, Any] = {"retry_total": 1, "initial_backoff": 0, "increment_base": 1,
                                  "random_jitter_range": 1,
                                  # seconds: a hung endpoint fails the request (and is retried)
                                  "connection_timeout": 10, "read_timeout": 60}
#: The same for the service principal's token requests (azure-core's retry policy).
TOKEN_RETRIES: dict[str, Any] = {"retry_total": 1, "retry_backoff_factor": 0.5}


def blob_filesystem(service_client: Any) -> Any:
    """An adlfs file system on ``service_client`` (an ``azure.storage.blob.aio``
    ``BlobServiceClient`` built with :data:`CLIENT_RETRIES`)."""
    import adlfs

    # the Azure SDK logs every request and response, headers included, at INFO
    logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
    fs = adlfs.AzureBlobFileSystem(account_name=service_client.account_name, credential=service_client.credential,
                                   skip_instance_cache=True)
    fs.service_client = service_client  # adlfs takes no retry settings; its client is public
    return fs


def azure_errors() -> tuple[type[BaseException], ...]:
    """The Azure SDK's errors: unreachable account, refused credentials, throttling."""
    from azure.core.exceptions import AzureError

    return (AzureError,)


@receivers.register
class AzureDataLakeGen2Receiver(FileReceiver, tag="azure_data_lake_gen2", kw_only=True):
    """Reads files from Azure Data Lake Storage Gen2 containers."""

    template: ClassVar[Template] = file_template(
        "azure_data_lake_gen2", "Azure Data Lake Gen2",
        "A template for collecting data from files in Azure Data Lake Storage Gen2", {
            "connection_str": "<Please input the storage account connection string>",
            "storage_container_name": "<Please input the container name>",
            "data_directory": "/",
        })
    example: ClassVar[dict[str, Any]] = file_example("azure_data_lake_gen2", {
        "connection_str": "${AZURE_STORAGE_CONNECTION_STRING}", "storage_container_name": "exports",
        "data_directory": "/spraypaint"})

    connections: Annotated[list[AzureDataLakeGen2Connection], describe("Containers.", min_length=1)]

    def connect(self, index: int) -> Location:
        from azure.storage.blob.aio import BlobServiceClient

        conn = self.connections[index]
        fs = blob_filesystem(BlobServiceClient.from_connection_string(conn.connection_str, **CLIENT_RETRIES))
        return container_location(fs, conn.storage_container_name, conn.data_directory,
                                  f"az://{conn.account_name()}/")

    def client_errors(self) -> tuple[type[BaseException], ...]:
        return azure_errors()
