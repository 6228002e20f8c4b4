"""The broker's jars: the Maven manifest in the checkout, resolved once into the cache.

The Apache Kafka jars named in ``docker/kafka-broker/pom.xml`` are resolved from Maven Central
by Maven into ``<cache_dir>/kafka/<version>/``. The folder appears under that name only when
complete, so an interrupted download is never used.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka.process import last_lines
from streamcascade.settings import Settings

log = logging.getLogger(__name__)

#: Written into a jar folder once every jar is in it.
_JAR_STAMP = ".complete"


def broker_pom() -> Path:
    """The Maven manifest of the broker jars, ``docker/kafka-broker/pom.xml`` in the checkout."""
    pom = Path(__file__).resolve().parents[2] / "docker" / "kafka-broker" / "pom.xml"
    if not pom.is_file():
        raise KafkaLauncherError(
            f"the broker's Maven manifest {pom} is missing: the local launcher runs from a "
            "checkout of streamcascade (pip install -e .); with an installed wheel, point "
            "STREAMCASCADE_BOOTSTRAP at a cluster instead"
        )
    return pom


def kafka_version(pom: Path | None = None) -> str:
    """The pinned Kafka version: the ``kafka.version`` property of the broker's pom."""
    pom = pom or broker_pom()
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = ET.parse(pom).getroot().find("m:properties/m:kafka.version", ns)
    if node is None or not (node.text or "").strip():
        raise KafkaLauncherError(f"{pom} has no <kafka.version> property")
    return (node.text or "").strip()


def jars_dir(settings: Settings | None = None, version: str | None = None) -> Path:
    """Where the jars of ``version`` live (or will, once resolved)."""
    settings = settings or Settings()
    return Path(settings.cache_dir).expanduser() / "kafka" / (version or kafka_version())


def resolve_jars(settings: Settings | None = None, *, quiet: bool = True) -> Path:
    """Resolve the broker jars from Maven Central into the cache, once; return their folder.

    Concurrent callers (two test sessions, say) serialise on a lock file.
    """
    pom = broker_pom()
    target = jars_dir(settings, kafka_version(pom))
    if (target / _JAR_STAMP).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / f".{target.name}.lock"):
        if (target / _JAR_STAMP).is_file():
            return target
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaLauncherError(
                "Maven (mvn) is not on PATH: it is needed once, to fetch the Kafka broker jars "
                "from Maven Central (apt-get install maven, or set STREAMCASCADE_BOOTSTRAP)"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        cmd = [
            mvn, "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        if quiet:
            cmd.insert(1, "-q")
        log.info("resolving Kafka jars: %s", " ".join(cmd))
        # Maven's own progress goes to stderr, so that stdout carries only the jar folder.
        output = {"capture_output": True} if quiet else {"stdout": sys.stderr}
        proc = subprocess.run(cmd, text=True, check=False, **output)
        if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            shutil.rmtree(staging, ignore_errors=True)
            detail = last_lines((proc.stdout or "") + (proc.stderr or "")) if quiet else ""
            raise KafkaLauncherError(
                f"Maven could not resolve the Kafka jars (exit {proc.returncode})", log_tail=detail
            )
        (staging / _JAR_STAMP).write_text(" ".join(cmd) + "\n")
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target)
        staging.rename(target)
    return target


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
