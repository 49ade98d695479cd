"""filter_stream patterns: globs on each side of the colon."""

from __future__ import annotations

import pytest

from dataflows.records import StreamKey, pattern_problem, stream_matches

LASER = StreamKey("lasercut", "mssql")


@pytest.mark.parametrize(("pattern", "matches"), [
    ("*", True), ("lasercut:mssql", True), ("*:mssql", True), ("lasercut:*", True), ("lase*:*", True),
    ("laser?ut:ms*", True), ("[lm]asercut:*", True), ("diecast:*", False), ("*:azure_lake", False),
    ("Lasercut:mssql", False),
])
def test_stream_matches(pattern: str, matches: bool) -> None:
    assert stream_matches([pattern], LASER) is matches


@pytest.mark.parametrize("pattern", ["lasercut", "a:b:c", ":mssql", "lasercut:", "[a:b"])
def test_malformed_patterns_match_nothing(pattern: str) -> None:
    assert pattern_problem(pattern) is not None
    assert stream_matches([pattern], LASER) is False


def test_stream_key_text() -> None:
    assert str(LASER) == "lasercut:mssql"
    assert StreamKey.parse("plant:a:cycle") == StreamKey("plant:a", "cycle")
    with pytest.raises(ValueError, match="asset:stream_type"):
        StreamKey.parse("nocolon")
