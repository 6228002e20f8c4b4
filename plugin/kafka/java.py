"""Finding a Java runtime for the broker, and naming its exact build."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

from streamcascade.errors import KafkaLauncherError

#: Kafka 4 runs on Java 17 or newer.
MIN_JAVA = 17


def java_executable() -> str:
    """``$JAVA_HOME/bin/java``, else ``java`` on PATH; at least Java 17."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java or not Path(java).is_file():
        raise KafkaLauncherError(
            "Java is not installed (no java on PATH, nor in $JAVA_HOME/bin): the local Kafka "
            "broker needs Java 17 or newer (apt-get install openjdk-17-jre-headless), or set "
            "STREAMCASCADE_BOOTSTRAP to use an existing cluster"
        )
    match = re.search(r'version "(\d+)(?:\.(\d+))?', java_version_text(java))
    if match:
        major = int(match.group(1))
        major = int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
        if major < MIN_JAVA:
            raise KafkaLauncherError(
                f"Kafka 4 needs Java {MIN_JAVA} or newer; {java} is Java {major}"
            )
    return java


@functools.lru_cache(maxsize=4)
def java_version_text(java: str) -> str:
    """What ``java -version`` prints (on stderr)."""
    return subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr


def java_fingerprint(java: str) -> str:
    """A short name for this exact JVM build: class-data archives are valid for it alone."""
    ident = f"{Path(java).resolve()}\n{java_version_text(java)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]
