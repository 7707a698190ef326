"""The services a multi-node test cluster uses, each a real server process: an S3-compatible store (moto in
server mode), PostgreSQL (Debian's binaries, when installed) and an MLflow tracking server with proxied artifacts."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

from support.processes import ManagedProcess, free_port, http_ok, port_open

TEST_AWS_ENV = {
    # moto accepts any credentials; these only keep pyarrow/boto from looking for real ones.
    "AWS_ACCESS_KEY_ID": "reasondistill-test",
    "AWS_SECRET_ACCESS_KEY": "reasondistill-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class S3Store:
    """`moto` in server mode: an S3 API on host:port; `uri(bucket, prefix)` is what Ray Train's storage_path takes."""

    def __init__(self, host: str, workdir: Path) -> None:
        self.host = host
        self.port = free_port(host)
        self.endpoint = f"http://{host}:{self.port}"
        self.process = ManagedProcess(
            "moto S3",
            [sys.executable, "-m", "moto.server", "-H", host, "-p", str(self.port)],
            workdir / "moto.log",
            env={**os.environ, **TEST_AWS_ENV},
        )

    def start(self) -> S3Store:
        self.process.start().wait_until(lambda: http_ok(f"{self.endpoint}/moto-api/"), 60, "moto server")
        return self

    def uri(self, bucket: str, prefix: str) -> str:
        """A pyarrow S3 URI with the endpoint override; the bucket is created on first write."""
        query = urllib.parse.urlencode(
            {
                "endpoint_override": f"{self.host}:{self.port}",
                "scheme": "http",
                "region": "us-east-1",
                "allow_bucket_creation": "true",
            }
        )
        return f"s3://{bucket}/{prefix}?{query}"

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def read(self, bucket: str, key: str) -> bytes:
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, **_boto_credentials())
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()

    def stop(self) -> None:
        self.process.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": TEST_AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": TEST_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": TEST_AWS_ENV["AWS_DEFAULT_REGION"],
    }


def postgres_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (newest version installed), or None."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[4]))
    return Path(candidates[-1]).parent if candidates else None


def postgres_unavailable_reason() -> str | None:
    if postgres_bindir() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql (Debian package `postgresql`)"
    try:
        import psycopg2  # noqa: F401  (MLflow's SQLAlchemy store speaks to PostgreSQL through it)
    except ImportError:
        return "psycopg2 is not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "PostgreSQL refuses to run as root and `runuser` is missing"
    return None


class PostgresServer:
    """A throw-away PostgreSQL cluster (initdb into a temp dir) listening on host:port with trust auth."""

    def __init__(self, host: str, workdir: Path) -> None:
        bindir = postgres_bindir()
        assert bindir is not None
        self.bindir = bindir
        self.host = host
        self.port = free_port(host)
        # Its own folder outside the test's temp tree: pytest makes that 0700, which the postgres user cannot enter.
        self.workdir = Path(tempfile.mkdtemp(prefix="rdt-pg-"))
        self.datadir = self.workdir / "pgdata"
        self.log_file = workdir / "postgres.log"

    def _as_postgres(self, command: list[str]) -> list[str]:
        # initdb and postgres refuse to run as root; Debian's package made a `postgres` user.
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _run(self, command: list[str]) -> None:
        done = subprocess.run(self._as_postgres(command), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres")
        self._run([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "mlflow", "-A", "trust", "-E", "UTF8"])
        with (self.datadir / "pg_hba.conf").open("a") as hba:  # the server listens on the test network only
            hba.write(f"host all all {self.host}/32 trust\nhost all all samenet trust\n")
        self.process = ManagedProcess(
            "postgres",
            self._as_postgres(
                [
                    str(self.bindir / "postgres"),
                    "-D",
                    str(self.datadir),
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.workdir),
                    "-c",
                    "fsync=off",
                ]
            ),
            self.log_file,
        )
        self.process.start().wait_until(lambda: port_open(self.host, self.port), 60, "postgres")
        self._run([str(self.bindir / "createdb"), "-h", self.host, "-p", str(self.port), "-U", "mlflow", "mlflow"])
        return self

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://mlflow@{self.host}:{self.port}/mlflow"

    def stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop(signal.SIGINT)  # "fast" shutdown: SIGTERM would wait for every client to disconnect
        shutil.rmtree(self.workdir, ignore_errors=True)


class MLflowServer:
    """`mlflow server` with a SQL backend store and artifacts proxied (`--artifacts-destination`)."""

    def __init__(self, host: str, backend_store_uri: str, workdir: Path) -> None:
        self.host = host
        self.port = free_port(host)
        self.backend_store_uri = backend_store_uri
        self.artifacts = workdir / "mlflow-artifacts"
        self.workdir = workdir

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MLflowServer:
        self.process = ManagedProcess(
            "mlflow server",
            [
                _bin("mlflow"),
                "server",
                "--backend-store-uri",
                self.backend_store_uri,
                "--artifacts-destination",
                self.artifacts.as_uri(),
                "--serve-artifacts",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--allowed-hosts",
                f"{self.host}:{self.port},{self.host},localhost:{self.port},127.0.0.1:{self.port}",
            ],
            self.workdir / "mlflow-server.log",
            env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"},
        )
        self.process.start().wait_until(lambda: http_ok(f"{self.uri}/health"), 180, "mlflow server")
        return self

    def stop(self) -> None:
        self.process.stop(timeout_s=10)
