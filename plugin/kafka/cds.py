"""Class-data sharing: archives of the classes a broker's JVM loads, so later starts are quick.

Most of a broker's start on a small machine is the JVM loading and verifying Kafka's classes.
The first start of each JVM (storage format, broker) dumps the classes it loaded into a dynamic
CDS archive (``-XX:ArchiveClassesAtExit``, Java 13+) when it exits; later starts map that archive
(``-XX:SharedArchiveFile``) instead. An archive the JVM cannot use is ignored by it with a
warning, so a stale one costs speed, never correctness. Archives are cached beside the jars, one
per role and exact JVM build.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path

from streamcascade.kafka.java import java_fingerprint

log = logging.getLogger(__name__)

#: Where, in a broker's folder, the storage-format JVM writes its archive at exit.
FORMAT_ARCHIVE = "format.jsa"
#: Where, in a broker's folder, the broker's JVM writes its archive at exit.
BROKER_ARCHIVE = "broker.jsa"


def archive_path(jars: Path, java: str, role: str) -> Path:
    """The cached archive of ``role`` ("format" or "broker") for this JVM build."""
    return jars / "cds" / f"{role}-{java_fingerprint(java)}.jsa"


def archive_flags(final: Path, pending: Path) -> list[str]:
    """Use the cached archive when there is one; else ask the JVM to write one at exit."""
    if final.is_file():
        return [f"-XX:SharedArchiveFile={final}"]
    return [f"-XX:ArchiveClassesAtExit={pending}"]


def keep_archive(pending: Path, final: Path) -> None:
    """Move an archive that a JVM wrote at exit into the cache, unless one is there already."""
    if not pending.is_file() or pending.stat().st_size == 0 or final.is_file():
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{os.getpid()}")
    try:
        shutil.move(pending, staging)
        os.replace(staging, final)  # atomic: readers see no half-written archive
    except OSError as exc:
        log.debug("could not keep class-data archive %s: %s", pending, exc)
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
