"""The ``azure_data_lake`` receiver: FactoryTX's Azure Data Lake (Gen1) keys, pointed at an
Azure Storage account through adlfs and an Azure AD service principal.

Azure retired Data Lake Storage Gen1 on 29 February 2024. A FactoryTX config moving over
keeps its keys, read as follows (docs/connectors.md, "Azure Data Lake"):

- ``store_name``: the storage account; its blob endpoint is
  ``https://<store_name>.blob.core.windows.net`` unless ``account_host`` names another
  (a sovereign cloud, a private endpoint, or ``host:port/account`` for an emulator);
- ``tenant_id``, ``client_id``, ``client_secret``: the service principal, signed in with
  azure-identity's ``ClientSecretCredential`` (OAuth 2.0 client credentials) at
  ``authority_host`` (azure-identity's default, ``login.microsoftonline.com`` or
  ``$AZURE_AUTHORITY_HOST``, when absent);
- ``data_directory``: the container, then the folder in it (``container/folder``);
- ``max_files_per_request``: the most new or changed files taken from the connection per poll.

Everything else (filters, parsers, incremental reading, ``delete_completed``) is the file
core's: :mod:`connectors.receivers._files`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from connectors.receivers._files import (
    Connection,
    FileReceiver,
    Location,
    file_example,
    file_template,
)
from connectors.receivers.azure_data_lake_gen2 import (
    CLIENT_RETRIES,
    TOKEN_RETRIES,
    azure_errors,
    blob_filesystem,
    container_location,
)
from dataflows.sdk import (
    JsonPath,
    Template,
    Violation,
    describe,
    error,
    receivers,
)


class AzureDataLakeConnection(Connection, kw_only=True, frozen=True):
    """A folder of a storage account's container, read as a service principal."""

    tenant_id: Annotated[str, describe("Azure AD (Entra ID) tenant of the service principal.")]
    client_id: Annotated[str, describe("Service principal (application) id.")]
    client_secret: Annotated[str, describe("Service principal secret.", secret=True)]
    store_name: Annotated[str, describe("Storage account name (the Gen1 store name).", min_length=1)]
    data_directory: Annotated[str, describe("Container, then the folder in it: 'container/folder'.")] = "/"
    max_files_per_request: Annotated[int, describe("Most new or changed files taken per poll.", ge=1)] = 100
    account_host: Annotated[str | None, describe(
        "Blob endpoint host (and path), e.g. 'plant.blob.core.usgovcloudapi.net'; by default "
        "'<store_name>.blob.core.windows.net'.")] = None
    authority_host: Annotated[str | None, describe(
        "Azure AD authority, e.g. 'login.microsoftonline.us'; azure-identity's default (or "
        "$AZURE_AUTHORITY_HOST) when absent.")] = None

    def container_and_folder(self) -> tuple[str, str]:
        """``data_directory`` split into the container and the folder in it."""
        container, _, folder = self.data_directory.strip("/").partition("/")
        return container, folder


@receivers.register
class AzureDataLakeReceiver(FileReceiver, tag="azure_data_lake", kw_only=True):
    """Reads files from Azure Storage with FactoryTX's Azure Data Lake keys."""

    template: ClassVar[Template] = file_template(
        "azure_data_lake", "Azure Data Lake",
        "A template for collecting data from files in Azure Data Lake Storage", {
            "tenant_id": "<Please input the Azure AD tenant id>",
            "client_id": "<Please input the service principal's client id>",
            "client_secret": "<Please input the service principal's secret>",
            "store_name": "<Please input the storage account name>",
            "data_directory": "<Please input the container and folder (e.g. exports/spraypaint)>",
        })
    example: ClassVar[dict[str, Any]] = file_example("azure_data_lake", {
        "tenant_id": "00000000-0000-0000-0000-000000000000",
        "client_id": "11111111-1111-1111-1111-111111111111", "client_secret": "${AZURE_CLIENT_SECRET}",
        "store_name": "plantlake", "data_directory": "exports/spraypaint", "max_files_per_request": 10})

    connections: Annotated[list[AzureDataLakeConnection], describe("Stores.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = super().violations(path)
        for index, conn in enumerate(self.connections):
            if not conn.container_and_folder()[0]:
                out.append(error("data_directory must name the container (e.g. 'exports/spraypaint')",
                                 [*path, "connections", index, "data_directory"]))
        return out

    def connect(self, index: int) -> Location:
        from azure.identity.aio import ClientSecretCredential
        from azure.storage.blob.aio import BlobServiceClient

        conn = self.connections[index]
        options = {"authority": conn.authority_host} if conn.authority_host else {}
        credential = ClientSecretCredential(conn.tenant_id, conn.client_id, conn.client_secret,
                                            **options, **TOKEN_RETRIES)
        host = conn.account_host or f"{conn.store_name}.blob.core.windows.net"
        fs = blob_filesystem(BlobServiceClient(f"https://{host}", credential=credential, **CLIENT_RETRIES))
        container, folder = conn.container_and_folder()
        return container_location(fs, container, folder, f"az://{conn.store_name}/")

    def files_per_poll(self, index: int) -> int | None:
        return self.connections[index].max_files_per_request

    def client_errors(self) -> tuple[type[BaseException], ...]:
        return azure_errors()
