"""S3Proxy (an S3-compatible server, filesystem backend) on 127.0.0.1 and a free port.

Its jars come from Maven Central: ``mvn dependency:copy-dependencies`` on
``tests/services/s3proxy/pom.xml`` copies them to ``.cache/s3proxy/<version>/`` once; the
machine's Java runs ``org.gaul.s3proxy.Main``. Buckets are directories below a temporary
directory removed on exit. S3Proxy 2.6 answers the newer botocore checksum headers with
NotImplemented, so clients use ``when_required`` checksums (the ``s3`` receiver's
``request_checksum_calculation``/``response_checksum_validation``).
"""

from __future__ import annotations

import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services.process import ServerProcess, free_port, maven_jars

ROOT = Path(__file__).resolve().parents[2]
POM = Path(__file__).with_name("s3proxy") / "pom.xml"
VERSION = "2.6.0"
JARS = ROOT / ".cache" / "s3proxy" / VERSION
ACCESS_KEY, SECRET_KEY = "factoryflow-test", "factoryflow-test-secret"


def s3proxy_jars() -> Path:
    """The directory of S3Proxy's jars, fetched with Maven on first use.

    :raises FileNotFoundError: Maven or Java is missing (``scripts/setup.sh --services``).
    """
    return maven_jars(POM, JARS, f"s3proxy-{VERSION}.jar")


@dataclass
class S3Server:
    """A running S3Proxy: ``endpoint_url``, ``access_key_id``/``secret_access_key``, and
    ``data`` (one directory per bucket)."""

    endpoint_url: str
    data: Path
    process: ServerProcess
    access_key_id: str = ACCESS_KEY
    secret_access_key: str = SECRET_KEY

    def connection(self, bucket: str, **keys: Any) -> dict[str, Any]:
        """An ``s3`` receiver connection to ``bucket`` here."""
        return {"endpoint_url": self.endpoint_url, "access_key_id": self.access_key_id,
                "secret_access_key": self.secret_access_key, "bucket": bucket,
                "request_checksum_calculation": "when_required",
                "response_checksum_validation": "when_required", **keys}

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists."""
        if not (self.data / name).is_dir():
            self.filesystem().call_s3("create_bucket", Bucket=name)

    def filesystem(self) -> Any:
        """An s3fs file system on this server (for tests to put and change objects)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key_id, secret=self.secret_access_key,
                                 endpoint_url=self.endpoint_url, skip_instance_cache=True,
                                 config_kwargs={"request_checksum_calculation": "when_required",
                                                "response_checksum_validation": "when_required"})


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """Start S3Proxy on a free port, yield it, stop it and delete its data."""
    root = Path(tempfile.mkdtemp(prefix="factoryflow-s3proxy-"))
    port = free_port()
    (root / "data").mkdir()
    (root / "s3proxy.conf").write_text("\n".join([
        f"s3proxy.endpoint=http://127.0.0.1:{port}",
        "s3proxy.authorization=aws-v2-or-v4",
        f"s3proxy.identity={ACCESS_KEY}",
        f"s3proxy.credential={SECRET_KEY}",
        "jclouds.provider=filesystem",
        f"jclouds.filesystem.basedir={root / 'data'}",
        "",
    ]))
    jars = s3proxy_jars()
    process = ServerProcess("S3Proxy", ["java", "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC",
                                        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                                        "-Dlogback.configurationFile=" + str(root / "logback.xml"),
                                        "-cp", f"{jars}/*", "org.gaul.s3proxy.Main",
                                        "--properties", str(root / "s3proxy.conf")], root / "s3proxy.log")
    (root / "logback.xml").write_text('<configuration><root level="WARN"/></configuration>\n')

    def ready() -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
        except urllib.error.HTTPError:
            return True  # it answers (403 without credentials)
        return True

    try:
        process.start(ready, timeout=90)
        yield S3Server(f"http://127.0.0.1:{port}", root / "data", process)
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)
