"""The config model: published configs accepted, every problem reported at its json_path."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from connectors.receivers.sql import SqlConnection, SqlReceiver
from dataflows import config as cfg
from dataflows import registry
from dataflows.config import ConfigError, Violation, load, read_document, validate
from dataflows.sdk import secret_paths
from tests.specs import quickstart, rest_examples, templates


def base() -> dict[str, Any]:
    """A valid, runnable document: a localfile and a sql receiver, two transforms, one transmit."""
    return {
        "data_receiver": [
            {"data_receiver_name": "files", "protocol": "localfile", "poll_interval": 5,
             "connections": [{"data_directory": "/data/in"}],
             "parsers": [{"parser_name": "csv_0", "parser_type": "csv"}],
             "streams": [{"asset": "spraypaint", "stream_type": "csv", "file_filter": ["*.csv"],
                          "parser": "csv_0"}]},
            {"data_receiver_name": "db", "protocol": "sql", "poll_interval": 10,
             "connections": [{"database_type": "sqlite", "database_name": "/data/plant.sqlite"}],
             "streams": [{"asset": "lasercut", "stream_type": "sql",
                          "query": "SELECT * FROM t WHERE timestamp > :timestamp ORDER BY timestamp",
                          "state_fields": [{"column_name": "timestamp", "data_type": "timestamp",
                                            "initial_value": "2018-10-22 10:29:00"}]}]},
        ],
        "transforms": [
            {"transform_name": "rename", "transform_type": "rename", "filter_stream": ["spraypaint:*"],
             "renames": [{"from": "Timestamp", "to": "timestamp"}]},
            {"transform_name": "tz", "transform_type": "convert_timestamps", "filter_stream": ["*"],
             "field_names": ["timestamp"], "timezone": "Asia/Tokyo"},
        ],
        "data_transmit": [{"transmit_name": "local", "transmit_type": "localfile"}],
    }


def paths(violations: list[Violation]) -> list[tuple[list[str | int], str]]:
    return [(v.json_path, v.level) for v in violations]


SIGHT_MACHINE_ENV = {"SIGHT_MACHINE_BASE_URL": "https://plant.sightmachine.io",
                     "SIGHT_MACHINE_API_KEY": "key", "SIGHT_MACHINE_API_KEY_ID": "edge"}


def test_quickstart_is_accepted_verbatim() -> None:
    # its transmit omits base_url and the keys: they come from the environment
    assert validate(quickstart(), environ=SIGHT_MACHINE_ENV) == []
    without = validate(quickstart(), environ={})
    assert paths(without) == [(["data_transmit", 0, key], "warning")
                              for key in ("base_url", "API_key", "API_key_ID")]


@pytest.mark.parametrize("name", ["Basic", "Localfile", "SMB", "SQL", "OPCUA"])
def test_every_template_is_accepted(name: str) -> None:
    template = next(t for t in templates() if t["name"] == name)
    violations = validate(template["configuration"])
    assert [v for v in violations if v.level == "error"] == []
    # the only warnings are the template's own "<Please ...>" placeholders
    assert all("placeholder" in v.description for v in violations)


def test_templates_use_field_names_as_string_and_list() -> None:
    forms = {type(t.get("field_names")) for tpl in templates()
             for t in tpl["configuration"]["transforms"] if "field_names" in t}
    assert forms == {str, list}


@pytest.mark.parametrize("where", ["GET /v1/config", "POST /v1/config", "POST /v1/config/validate"])
def test_rest_examples_are_accepted(where: str) -> None:
    assert [v for v in validate(rest_examples()[where]) if v.level == "error"] == []


def test_base_document_is_valid_and_runnable() -> None:
    assert validate(base(), runnable=True) == []
    config = load(base())
    assert [r.data_receiver_name for r in config.data_receiver] == ["files", "db"]
    assert [str(s.key) for _, s in config.streams()] == ["spraypaint:csv", "lasercut:sql"]


def test_root_path_is_the_older_data_directory() -> None:
    doc = base()
    doc["data_receiver"][0]["connections"] = [{"root_path": "/data/old"}]
    config = load(doc)
    assert config.data_receiver[0].connect(0).directory == "/data/old"


def test_transmit_without_type_is_remotedatapost() -> None:
    doc = base()
    doc["data_transmit"] = [{"transmit_name": "t", "base_url": "https://x.sightmachine.io"}]
    config = load(doc, runnable=False, environ=SIGHT_MACHINE_ENV)
    assert type(config.data_transmit[0]).__struct_config__.tag == "remotedatapost"
    assert config.data_transmit[0].base_url == "https://x.sightmachine.io"
    assert config.data_transmit[0].API_key_ID == "edge"


def test_quickstart_is_runnable_as_written() -> None:
    config = load(quickstart(), runnable=True, environ=SIGHT_MACHINE_ENV)
    lake = config.data_receiver[1]
    assert lake.tag() == "azure_data_lake"
    assert lake.connections[0].container_and_folder() == ("directory-1", "")
    assert lake.files_per_poll(0) == 1


def test_environment_variables_are_resolved() -> None:
    doc = base()
    doc["data_receiver"][1]["connections"][0]["database_name"] = "${PLANT_DB}"
    config = load(doc, environ={"PLANT_DB": "/srv/plant.sqlite"})
    assert config.data_receiver[1].connections[0].database_name == "/srv/plant.sqlite"
    doc["data_receiver"][1]["connections"][0]["database_name"] = "$${PLANT_DB}"
    assert load(doc, environ={}).data_receiver[1].connections[0].database_name == "${PLANT_DB}"


def test_secrets_are_marked_in_the_schema() -> None:
    assert secret_paths(SqlConnection) == ["password"]
    from connectors.receivers.azure_data_lake import AzureDataLakeConnection
    from connectors.receivers.azure_data_lake_gen2 import AzureDataLakeGen2Connection
    from connectors.receivers.s3 import S3Connection
    from connectors.receivers.smb import SmbConnection
    from connectors.transmits.remotedatapost import RemoteDataPost
    assert secret_paths(AzureDataLakeConnection) == ["client_secret"]
    assert secret_paths(AzureDataLakeGen2Connection) == ["connection_str"]
    assert secret_paths(S3Connection) == ["secret_access_key"]
    assert secret_paths(SmbConnection) == ["password"]
    assert secret_paths(RemoteDataPost) == ["API_key"]
    assert secret_paths(SqlReceiver) == []


def test_invalid_json_file_names_line_and_column(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"data_receiver": [\n  {"protocol": "sql",}\n]}')
    with pytest.raises(ConfigError) as info:
        read_document(path)
    assert "line 2 column" in info.value.violations[0].description
    assert info.value.violations[0].json_path == []


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: list[str | int], value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path: list[str | int]) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _append(section: str, item_from: int, **changes: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc[section].append({**copy.deepcopy(doc[section][item_from]), **changes})
    return mutate


R0, R1 = ["data_receiver", 0], ["data_receiver", 1]
SQL_STREAM = [*R1, "streams", 0]

BROKEN: dict[str, tuple[Mutation, list[tuple[list[str | int], str]], str]] = {
    "top-level typo": (_set(["data_reciever"], []), [(["data_reciever"], "error")], "unknown key"),
    "section not a list": (_set(["data_transmit"], {"transmit_name": "x"}), [(["data_transmit"], "error")],
                           "'data_transmit' section is not defined as a list"),
    "unknown protocol": (_set([*R0, "protocol"], "ftp"), [([*R0, "protocol"], "error")],
                         f"accepted: {', '.join(registry.receivers.tags())}"),
    "missing protocol": (_delete([*R0, "protocol"]), [(R0, "error")], "missing required key `protocol`"),
    "unknown receiver key": (_set([*R0, "pollinterval"], 5), [([*R0, "pollinterval"], "error")],
                             "unknown key `pollinterval`"),
    "poll_interval as string": (_set([*R0, "poll_interval"], "5"), [([*R0, "poll_interval"], "error")],
                                "Expected `float`"),
    "poll_interval zero": (_set([*R0, "poll_interval"], 0), [([*R0, "poll_interval"], "error")], ">= 0.05"),
    "missing receiver name": (_delete([*R0, "data_receiver_name"]), [(R0, "error")],
                              "missing required key `data_receiver_name`"),
    "duplicate receiver name": (_set([*R1, "data_receiver_name"], "files"),
                                [([*R0, "data_receiver_name"], "error"), ([*R1, "data_receiver_name"], "error")],
                                "duplicate data_receiver_name 'files'"),
    "duplicate transform name": (_set(["transforms", 1, "transform_name"], "rename"),
                                 [(["transforms", 0, "transform_name"], "error"),
                                  (["transforms", 1, "transform_name"], "error")], "duplicate transform_name"),
    "duplicate transmit name": (_append("data_transmit", 0),
                                [(["data_transmit", 0, "transmit_name"], "error"),
                                 (["data_transmit", 1, "transmit_name"], "error")], "duplicate transmit_name"),
    "parser naming no parser": (_set([*R0, "streams", 0, "parser"], "spreadsheets"),
                                [([*R0, "streams", 0, "parser"], "error")], 'No parser named "spreadsheets".'),
    "malformed filter_stream": (_set(["transforms", 0, "filter_stream"], ["a:b:c"]),
                                [(["transforms", 0, "filter_stream", 0], "error")], "must be '*' or"),
    "filter_stream matching nothing": (_set(["transforms", 0, "filter_stream"], ["diecast:*"]),
                                       [(["transforms", 0, "filter_stream", 0], "warning")],
                                       "matches no configured stream"),
    "state field unused in query": (_set([*SQL_STREAM, "query"], "SELECT * FROM t ORDER BY timestamp"),
                                    [([*SQL_STREAM, "state_fields", 0, "column_name"], "warning")],
                                    "never used as :timestamp"),
    "invalid timezone": (_set(["transforms", 1, "timezone"], "Asia/Tokio"),
                         [(["transforms", 1, "timezone"], "error")], "not an IANA timezone"),
    "unsupported database_type": (_set([*R1, "connections", 0, "database_type"], "oracle"),
                                  [([*R1, "connections", 0, "database_type"], "error")],
                                  "accepted: mariadb, mssql, mysql, postgresql, sqlite"),
    "missing environment variable": (_set([*R1, "connections", 0, "password"], "${NO_SUCH_VAR_FF}"),
                                     [([*R1, "connections", 0, "password"], "error")], "'NO_SUCH_VAR_FF'"),
    "unknown transform_type": (_set(["transforms", 0, "transform_type"], "pandas"),
                               [(["transforms", 0, "transform_type"], "error")],
                               f"accepted: {', '.join(registry.transforms.tags())}"),
    "empty connections": (_set([*R0, "connections"], []), [([*R0, "connections"], "error")],
                          "length >= 1"),
    "file_filter and path_filter": (_set([*R0, "streams", 0, "path_filter"], ["*/x.csv"]),
                                    [([*R0, "streams", 0], "error")], "not both"),
    "data_directory and root_path": (_set([*R0, "connections", 0, "root_path"], "/old"),
                                     [([*R0, "connections", 0], "error")], "exactly one of"),
    "unknown data_type": (_set([*SQL_STREAM, "state_fields", 0, "data_type"], "datetime"),
                          [([*SQL_STREAM, "state_fields", 0, "data_type"], "error")],
                          "accepted: float, integer, string, timestamp"),
    "unparseable initial_value": (_set([*SQL_STREAM, "state_fields", 0, "initial_value"], "yesterday"),
                                  [([*SQL_STREAM, "state_fields", 0, "initial_value"], "error")],
                                  "does not parse as timestamp"),
    "query parameter without state": (
        _set([*SQL_STREAM, "query"], "SELECT * FROM t WHERE timestamp > :timestamp AND id > :id"),
        [([*SQL_STREAM, "query"], "error")], "uses :id"),
    "unknown nested key": (_set([*R0, "parsers", 0], {"parser_name": "csv_0", "parser_type": "spreadsheet",
                                                      "options": {"parse": {"sep": ";"}}}),
                           [([*R0, "parsers", 0, "options", "parse", "sep"], "error")], "unknown key `sep`"),
    "format and unit": (lambda doc: doc["transforms"][1].update(format="%Y", unit="s"),
                        [(["transforms", 1], "error")],
                        "not both"),
    "stream reaching no transmit": (_set(["data_transmit", 0, "filter_stream"], ["spraypaint:*"]),
                                    [([*R1, "streams", 0], "warning")], "reach no transmit"),
    "duplicate stream in a receiver": (
        lambda doc: doc["data_receiver"][1]["streams"].append(copy.deepcopy(doc["data_receiver"][1]["streams"][0])),
        [([*R1, "streams", 0], "error"), ([*R1, "streams", 1], "error")], "duplicate stream lasercut:sql"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_document(case: str) -> None:
    mutate, expected, text = BROKEN[case]
    doc = base()
    mutate(doc)
    violations = validate(doc)
    assert paths(violations) == expected, violations
    assert text in violations[0].description


def test_root_must_be_an_object() -> None:
    assert paths(validate([])) == [([], "error")]


def test_every_problem_is_reported_not_just_the_first() -> None:
    doc = base()
    doc["data_receiver"][0]["poll_interval"] = -1
    doc["data_receiver"][1]["connections"][0]["database_type"] = "db2"
    doc["transforms"][1]["timezone"] = "Mars/Olympus"
    doc["data_transmit"][0]["transmit_type"] = "carrier_pigeon"
    assert paths(validate(doc)) == [
        ([*R0, "poll_interval"], "error"),
        ([*R1, "connections", 0, "database_type"], "error"),
        (["transforms", 1, "timezone"], "error"),
        (["data_transmit", 0, "transmit_type"], "error"),
    ]


def test_placeholders_are_errors_only_when_running() -> None:
    doc = base()
    doc["transforms"][1]["timezone"] = "<Please enter the asset timezone>"
    assert paths(validate(doc)) == [(["transforms", 1, "timezone"], "warning")]
    assert paths(validate(doc, runnable=True)) == [(["transforms", 1, "timezone"], "error")]


def test_config_error_message_lists_locations() -> None:
    doc = base()
    doc["transforms"][1]["timezone"] = "Nowhere"
    with pytest.raises(ConfigError, match="transforms/1/timezone: 'Nowhere' is not an IANA"):
        load(doc)


def test_violation_encodes_like_the_rest_api() -> None:
    import msgspec
    encoded = json.loads(msgspec.json.encode(cfg.error("x", ["data_transmit"])))
    assert encoded == {"description": "x", "json_path": ["data_transmit"], "level": "error"}
