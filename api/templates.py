"""Configuration templates served by ``GET /v1/config/templates[/<protocol>]``.

Basic, Localfile, SMB, SQL and OPCUA are the templates of
``shared/specs/factorytx-rest-api.txt`` (the SMB one with the document's missing comma
restored); every other receiver protocol factoryflow registers has one of its own, built
the same way. Each template validates with warnings only (its ``<Please ...>``
placeholders).
"""

from __future__ import annotations

import copy
from typing import Any

_TRANSMIT = {
    "transmit_name": "transmit_0",
    "base_url": "https://<tenant name>.sightmachine.io",
    "API_key_ID": "<Please input your API key ID>",
    "API_key": "<Please input your API key>",
}
_PARSERS = [{"parser_name": "parser_0", "parser_type": "spreadsheet", "filter_stream": ["*"],
             "file_format": "csv"}]
_STREAMS = [{"asset": "asset_0", "stream_type": "cycle", "file_filter": ["*.csv"]}]
_TIMESTAMP_TRANSFORM = {
    "transform_name": "transform_1", "transform_type": "convert_timestamps", "filter_stream": ["*"],
    "field_names": "<Please input the name of the timestamp field (e.g. \"datetime\")>",
}


def _file_template(protocol: str, connection: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_receiver": [{
            "data_receiver_name": "receiver_0", "protocol": protocol, "delete_completed": False,
            "poll_interval": 4, "connections": [connection], "parsers": _PARSERS, "streams": _STREAMS,
        }],
        "transforms": [
            {"transform_name": "transform_0", "transform_type": "convert_timestamps",
             "filter_stream": ["*"],
             "field_names": "<Please input the names of the fields to convert (e.g. \"datetime\")>",
             "timezone": "<Please enter the asset timezone>"},
            _TIMESTAMP_TRANSFORM,
        ],
        "data_transmit": [_TRANSMIT],
    }


_LOCALFILE = _file_template("localfile", {"data_directory": "/data/folder_with_data_files"})
_LOCALFILE["transforms"][0]["field_names"] = [
    "<Please input the names of the fields to convert (e.g. \"datetime\")>"]
_LOCALFILE["transforms"][1] = {
    "transform_name": "transform_1", "transform_type": "convert_timestamps", "filter_stream": ["*"],
    "field_name": "<Please input the name of the timestamp field (e.g. \"datetime\")>",
}

TEMPLATES: list[dict[str, Any]] = [
    {
        "configuration": {"data_receiver": [], "transforms": [], "data_transmit": []},
        "name": "Basic",
        "description": "A basic template without data_receiver, transforms, and data_transmit settings",
    },
    {
        "configuration": _LOCALFILE,
        "name": "Localfile",
        "description": "A template for collecting data from the local filesystem",
    },
    {
        "configuration": _file_template("smb", {
            "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
            "username": "<Please input the username for login>",
            "password": "<Please input the password for login>",
            "shared_folder": "/data/folder-with-files",
        }),
        "name": "SMB",
        "description": "A template for collecting data from files on a Microsoft Windows Network",
    },
    {
        "configuration": {
            "data_receiver": [{
                "data_receiver_name": "receiver_0", "protocol": "sql", "poll_interval": 10,
                "connections": [{
                    "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
                    "port": 5432,
                    "username": "<Please input the username for login>",
                    "password": "<Please input the password for login>",
                    "database_type": "<Please specify the type of database (e.g. postgresql)>",
                    "database_name": "<Please specify the name of the database to access>",
                    "ssl": False,
                }],
                "streams": [{
                    "asset": "<Please input the asset name (e.g. BoltMech)>",
                    "stream_type": "<Please input the stream type (e.g. bolts)>",
                    "query": "<Please input the SQL query (e.g. SELECT * FROM boltmech WHERE id > :id "
                             "ORDER BY id ASC LIMIT 100)>",
                    "state_fields": [{
                        "column_name": "<Please input the column name (e.g. id)>",
                        "data_type": "<Please input the data type (e.g. integer)>",
                    }],
                }],
            }],
            "transforms": [_TIMESTAMP_TRANSFORM],
            "data_transmit": [_TRANSMIT],
        },
        "name": "SQL",
        "description": "A template for collecting data from a SQL server",
    },
    {
        "configuration": {
            "data_receiver": [{
                "data_receiver_name": "receiver_0", "protocol": "opcua", "poll_interval": 4,
                "connections": [{
                    "host": "<Please input the hostname or IP address (e.g. 127.0.0.1)>",
                    "port": 49320, "timeout": 3,
                }],
                "streams": [
                    {"asset": "asset_1", "stream_type": "cycle",
                     "opcua_tags": [{"name": "Spraypaint.Drying.Fan.Speed", "exportname": "Spraypaint1"}]},
                    {"asset": "asset_2", "stream_type": "cycle",
                     "opcua_tags": [{"name": "Blister.Pack.Packaging", "exportname": "BlisterPack1"}]},
                ],
            }],
            "transforms": [],
            "data_transmit": [_TRANSMIT],
        },
        "name": "OPCUA",
        "description": "A template for collecting data from an OPC UA server",
    },
    {
        "configuration": _file_template("s3", {
            "endpoint_url": "<Please input the S3 endpoint (e.g. https://s3.us-east-1.amazonaws.com)>",
            "access_key_id": "<Please input the access key id>",
            "secret_access_key": "<Please input the secret access key>",
            "bucket": "<Please input the bucket name>",
        }),
        "name": "S3",
        "description": "A template for collecting data from files in Amazon S3 buckets",
    },
    {
        "configuration": _file_template("azure_data_lake", {
            "tenant_id": "<Please input the Azure AD tenant id>",
            "client_id": "<Please input the service principal's client id>",
            "client_secret": "<Please input the service principal's secret>",
            "store_name": "<Please input the Data Lake store name>",
            "data_directory": "/",
        }),
        "name": "Azure Data Lake",
        "description": "A template for collecting data from files in Azure Data Lake Storage Gen1",
    },
    {
        "configuration": _file_template("azure_data_lake_gen2", {
            "connection_str": "<Please input the storage account connection string>",
            "storage_container_name": "<Please input the container name>",
            "data_directory": "/",
        }),
        "name": "Azure Data Lake Gen2",
        "description": "A template for collecting data from files in Azure Data Lake Storage Gen2",
    },
]


def templates() -> list[dict[str, Any]]:
    """Every template (deep copies): ``{"configuration", "name", "description"}``."""
    return copy.deepcopy(TEMPLATES)


def template_for(protocol: str) -> dict[str, Any] | None:
    """The configuration of the template for ``protocol`` (a receiver protocol such as
    ``opcua``, or a template name such as ``basic``; case-insensitive), or None."""
    wanted = protocol.lower()
    for template in TEMPLATES:
        receivers = template["configuration"]["data_receiver"]
        protocols = {r["protocol"] for r in receivers}
        if wanted in protocols or wanted == template["name"].lower().replace(" ", "_"):
            return copy.deepcopy(template["configuration"])
    return None
