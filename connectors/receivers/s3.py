"""The ``s3`` receiver: files (objects) in S3 buckets, through s3fs.

Connection keys (``shared/specs/factorytx-digest.md``, Receivers): ``endpoint_url``,
``access_key_id``, ``secret_access_key``, ``bucket``, ``regex`` (on object keys), and
beyond FactoryTX: ``data_directory`` (a key prefix in the bucket), ``region_name`` and
botocore's ``request_checksum_calculation``/``response_checksum_validation``. Credentials
the config omits come from the standard AWS chain (environment, profile, instance role).

S3-compatible stores that do not implement the newer checksum headers (S3Proxy, older
MinIO, Ceph) need both checksum keys at ``when_required``. Everything else (filters,
parsers, incremental reading, ``delete_completed``) is the file core's:
:mod:`connectors.receivers._files`. An object's identity is its key, size, last-modified
time and ETag.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from connectors.receivers._files import (
    Connection,
    FileReceiver,
    Location,
    file_example,
    file_template,
)
from dataflows.sdk import (
    JsonPath,
    Template,
    Violation,
    describe,
    error,
    receivers,
)

CHECKSUM_MODES = ("when_supported", "when_required")


class S3Connection(Connection, kw_only=True, frozen=True):
    """An S3 bucket, or a key prefix in one."""

    endpoint_url: Annotated[str | None, describe(
        "S3 endpoint, e.g. https://s3.us-east-1.amazonaws.com; AWS's own by default.")] = None
    access_key_id: Annotated[str | None, describe(
        "Access key id; from the AWS environment or profile when absent.")] = None
    secret_access_key: Annotated[str | None, describe("Secret access key.", secret=True)] = None
    bucket: Annotated[str, describe("Bucket name.", min_length=1)]
    data_directory: Annotated[str, describe("Key prefix (folder) in the bucket.")] = ""
    regex: Annotated[str | None, describe("Regular expression the object key must match (search).")] = None
    region_name: Annotated[str | None, describe("AWS region.")] = None
    request_checksum_calculation: Annotated[str, describe(
        "botocore's request checksums: when_supported, or when_required for stores that lack them.",
        choices=CHECKSUM_MODES)] = "when_supported"
    response_checksum_validation: Annotated[str, describe(
        "botocore's response checksum validation: when_supported or when_required.",
        choices=CHECKSUM_MODES)] = "when_supported"


@receivers.register
class S3Receiver(FileReceiver, tag="s3", kw_only=True):
    """Reads objects from S3 buckets."""

    template: ClassVar[Template] = file_template(
        "s3", "S3", "A template for collecting data from files in Amazon S3 buckets", {
            "endpoint_url": "<Please input the S3 endpoint (e.g. https://s3.us-east-1.amazonaws.com)>",
            "access_key_id": "<Please input the access key id>",
            "secret_access_key": "<Please input the secret access key>",
            "bucket": "<Please input the bucket name>",
        })
    example: ClassVar[dict[str, Any]] = file_example("s3", {
        "endpoint_url": "https://s3.us-east-1.amazonaws.com", "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "${AWS_SECRET_ACCESS_KEY}", "bucket": "plant-exports",
        "data_directory": "spraypaint"})

    connections: Annotated[list[S3Connection], describe("Buckets.", min_length=1)]

    def violations(self, path: JsonPath) -> list[Violation]:
        out = super().violations(path)
        for index, conn in enumerate(self.connections):
            if conn.regex is not None:
                try:
                    re.compile(conn.regex)
                except re.error as exc:
                    out.append(error(f"not a regular expression: {exc}", [*path, "connections", index, "regex"]))
        return out

    def connect(self, index: int) -> Location:
        import s3fs

        conn = self.connections[index]
        fs = s3fs.S3FileSystem(
            key=conn.access_key_id, secret=conn.secret_access_key, endpoint_url=conn.endpoint_url,
            client_kwargs={"region_name": conn.region_name} if conn.region_name else {},
            config_kwargs={"request_checksum_calculation": conn.request_checksum_calculation,
                           "response_checksum_validation": conn.response_checksum_validation,
                           "retries": {"max_attempts": 2},
                           # seconds: a hung endpoint fails the request (and is retried)
                           "connect_timeout": 10, "read_timeout": 60},
            skip_instance_cache=True)
        prefix = conn.data_directory.strip("/")
        return Location(fs, f"{conn.bucket}/{prefix}" if prefix else conn.bucket, url="s3://",
                        container=conn.bucket,
                        key_filter=re.compile(conn.regex) if conn.regex is not None else None)

    def client_errors(self) -> tuple[type[BaseException], ...]:
        from botocore.exceptions import BotoCoreError, ClientError

        return (BotoCoreError, ClientError)
