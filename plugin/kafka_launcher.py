"""A local, single-node Apache Kafka broker for the demo and the tests.

The broker is the real thing: the Apache Kafka jars named in ``docker/kafka-broker/pom.xml`` are
resolved from Maven Central by Maven, once, into ``<cache_dir>/kafka/<version>/``, and
``kafka.Kafka`` runs as a combined KRaft broker and controller on 127.0.0.1. Each broker lives in
its own data directory, which also holds its configuration, its log (``broker.log``) and a
``state.json`` that lets another process (``streamcascade kafka down``) find and stop it, so
several brokers can run side by side.

Examples
--------
>>> with LocalKafka(data_dir=tmp) as broker:          # doctest: +SKIP
...     produce_to(broker.bootstrap)
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from streamcascade.errors import KafkaLauncherError
from streamcascade.settings import Settings

__all__ = [
    "BrokerState",
    "LocalKafka",
    "broker_pom",
    "check_cluster",
    "find_free_port",
    "jars_dir",
    "kafka_version",
    "read_state",
    "resolve_jars",
    "running_broker",
    "stop_broker",
]

log = logging.getLogger(__name__)

#: Heap of the broker's JVM. Kafka's own default (1 GiB, pre-touched) is sized for servers; a
#: test broker holds a few small topics, and 512 MiB leaves room on a small machine.
DEFAULT_HEAP = "512m"
#: JVM flags besides the heap: G1 with short pauses, as Kafka's scripts use; die on OOM rather
#: than limp on. The quick C1 compiler only (``TieredStopAtLevel=1``): for minutes after a start,
#: the optimising C2 compiler took about half a core (measured at 1,000 events/s on 2 cores, by
#: thread: 55% of a core in compiler threads, 30-40% serving requests), the workers and the
#: clients beside the broker waited for a core meanwhile, and the end-to-end p99 latency grew
#: with it. C1 code served the same load in about half the broker's CPU in all.
JVM_FLAGS = (
    "-XX:TieredStopAtLevel=1",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
STATE_FILE = "state.json"
LOG_FILE = "broker.log"
_JAR_STAMP = ".complete"
_LOG_TAIL_LINES = 40

_LOG4J2_PROPERTIES = """\
# Written by streamcascade's launcher: INFO to the console, which goes to broker.log.
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


# --------------------------------------------------------------------------------------------
# Jars
# --------------------------------------------------------------------------------------------


def broker_pom() -> Path:
    """The Maven manifest of the broker jars, ``docker/kafka-broker/pom.xml`` in the checkout."""
    pom = Path(__file__).resolve().parent.parent / "docker" / "kafka-broker" / "pom.xml"
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

    Concurrent callers (two test sessions, say) serialise on a lock file, and the jars appear
    under their final name only when complete, so an interrupted download is never used.
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
            detail = _tail((proc.stdout or "") + (proc.stderr or "")) if quiet else ""
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


# --------------------------------------------------------------------------------------------
# Java, ports, clusters
# --------------------------------------------------------------------------------------------


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
    out = _java_version_text(java)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match:
        major = int(match.group(1))
        major = int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8
        if major < 17:
            raise KafkaLauncherError(f"Kafka 4 needs Java 17 or newer; {java} is Java {major}")
    return java


@functools.lru_cache(maxsize=4)
def _java_version_text(java: str) -> str:
    return subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr


def _java_fingerprint(java: str) -> str:
    """A short name for this exact JVM build: class-data archives are valid for it alone."""
    ident = f"{Path(java).resolve()}\n{_java_version_text(java)}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise KafkaLauncherError(f"port {port} on 127.0.0.1 is already in use") from exc


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def check_cluster(bootstrap: str, timeout: float = 10.0) -> int:
    """Ask the cluster at ``bootstrap`` for its metadata; return how many brokers it has.

    Raises
    ------
    KafkaLauncherError
        No broker answered within ``timeout`` seconds.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("streamcascade.kafka_launcher.librdkafka")
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": quiet})  # type: ignore[dict-item]
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaLauncherError(f"no Kafka broker answered at {bootstrap}: {exc}") from exc
    if not metadata.brokers:
        raise KafkaLauncherError(f"the cluster at {bootstrap} reports no brokers")
    return len(metadata.brokers)


# --------------------------------------------------------------------------------------------
# State of a running broker
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BrokerState:
    """What ``state.json`` records about a broker that was started."""

    pid: int
    port: int
    controller_port: int
    data_dir: str
    version: str
    started_at: float
    #: Where this broker's class-data archive goes once its JVM has written it at exit ("" none).
    cds_archive: str = ""

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def is_alive(self) -> bool:
        """Whether the recorded pid is still this broker (and not a reused pid)."""
        return _is_kafka_process(self.pid)

    def rss_bytes(self) -> int | None:
        """Resident memory of the broker's JVM, from ``/proc``; None if unknown."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None


def _is_kafka_process(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}:  # exited, waiting to be reaped
        return False
    return b"kafka.Kafka" in cmdline


def read_state(data_dir: Path) -> BrokerState | None:
    """The state recorded in ``data_dir``, or None when no broker was started there."""
    try:
        raw = json.loads((Path(data_dir) / STATE_FILE).read_text())
        return BrokerState(**raw)
    except (OSError, ValueError, TypeError):
        return None


def running_broker(data_dir: Path) -> BrokerState | None:
    """The broker of ``data_dir`` if it is running, else None."""
    state = read_state(data_dir)
    return state if state is not None and state.is_alive() else None


def stop_broker(data_dir: Path, timeout: float = 20.0) -> bool:
    """Stop the broker of ``data_dir``: SIGTERM, then SIGKILL after ``timeout`` seconds.

    Returns True if a running broker was stopped, False if none was running.
    """
    state = running_broker(data_dir)
    if state is None:
        with contextlib.suppress(FileNotFoundError):
            (Path(data_dir) / STATE_FILE).unlink()
        return False
    _terminate(state.pid, timeout)
    if state.cds_archive:
        _keep_archive(Path(data_dir) / _BROKER_ARCHIVE, Path(state.cds_archive))
    with contextlib.suppress(FileNotFoundError):
        (Path(data_dir) / STATE_FILE).unlink()
    return True


def _terminate(pid: int, timeout: float, popen: subprocess.Popen[bytes] | None = None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not _wait_gone(pid, timeout, popen):
        log.warning("Kafka broker %d ignored SIGTERM for %.0fs; killing it", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _wait_gone(pid, 10.0, popen):
            raise KafkaLauncherError(f"Kafka broker {pid} survived SIGKILL")


def _wait_gone(pid: int, timeout: float, popen: subprocess.Popen[bytes] | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen is not None and popen.poll() is not None:
            return True
        if not _is_kafka_process(pid):
            if popen is not None:  # reap it, so no zombie is left behind
                popen.wait()
            else:  # another process's child: give its reaper (init) a moment
                _wait_reaped(pid, 2.0)
            return True
        time.sleep(0.1)
    return False


# -- class-data sharing ------------------------------------------------------------------------
# Most of a broker's start on a small machine is the JVM loading and verifying Kafka's classes.
# The first start of each JVM (storage format, broker) dumps the classes it loaded into a
# dynamic CDS archive (-XX:ArchiveClassesAtExit, Java 13+) when it exits; later starts map that
# archive (-XX:SharedArchiveFile) and start in about a third of the time. An archive the JVM
# cannot use is ignored by it with a warning, so a stale one costs speed, never correctness.

_FORMAT_ARCHIVE = "format.jsa"
_BROKER_ARCHIVE = "broker.jsa"


def _archive_path(jars: Path, java: str, role: str) -> Path:
    return jars / "cds" / f"{role}-{_java_fingerprint(java)}.jsa"


def _archive_flags(final: Path, pending: Path) -> list[str]:
    if final.is_file():
        return [f"-XX:SharedArchiveFile={final}"]
    return [f"-XX:ArchiveClassesAtExit={pending}"]


def _keep_archive(pending: Path, final: Path) -> None:
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


def _wait_reaped(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _log_tail(data_dir: Path) -> str:
    try:
        return _tail((data_dir / LOG_FILE).read_text(errors="replace"))
    except OSError:
        return ""


def _random_cluster_id() -> str:
    # Kafka's Uuid in its base64 form; Kafka's own generator skips ids starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


class LocalKafka:
    """A single-node Kafka (KRaft, combined broker and controller) on 127.0.0.1.

    Parameters
    ----------
    data_dir
        The broker's own folder: configuration, log segments, ``broker.log``, ``state.json``.
        It is wiped when the broker starts: every start is a fresh, empty cluster.
    port
        The client (PLAINTEXT) port; a free one when None.
    controller_port
        The KRaft controller port; a free one when None.
    heap
        Maximum JVM heap, in the JVM's notation (``512m``).
    startup_timeout
        Seconds to wait for the broker to answer clients.
    stop_timeout
        Seconds between SIGTERM and SIGKILL when stopping.
    tied_to_parent
        Ask Linux to SIGTERM the broker when the process that started it dies, so that a test
        session killed hard leaves no JVM behind. The CLI's ``kafka up`` sets it False: there
        the broker must outlive the command.
    broker_config
        Broker properties that override the launcher's (``{"log.retention.ms": "60000"}``).
    settings
        Where the jars are cached; ``Settings()`` when None.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = DEFAULT_HEAP,
        startup_timeout: float = 90.0,
        stop_timeout: float = 20.0,
        tied_to_parent: bool = True,
        broker_config: dict[str, str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.controller_port = controller_port
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.tied_to_parent = tied_to_parent
        self.broker_config = broker_config
        self.settings = settings
        self.state: BrokerState | None = None
        self._popen: subprocess.Popen[bytes] | None = None

    # -- public -------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the running broker."""
        if self.state is None:
            raise KafkaLauncherError("the broker is not started")
        return self.state.bootstrap

    def start(self) -> str:
        """Format storage, start the broker, wait until a client can use it; return bootstrap."""
        if running_broker(self.data_dir) is not None:
            raise KafkaLauncherError(f"a broker already runs in {self.data_dir}")
        # The cheap checks first, so that a wrong port or folder fails before any download.
        port = self.port or find_free_port()
        controller_port = self.controller_port or find_free_port()
        while controller_port == port:
            controller_port = find_free_port()
        _check_port_free(port)
        _check_port_free(controller_port)
        self._clear_data_dir()
        java = java_executable()
        jars = resolve_jars(self.settings)
        config = self._write_config(port, controller_port)
        classpath = f"{jars}{os.sep}*"
        jvm = [java, f"-Xmx{self.heap}", *JVM_FLAGS,
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "-cp", classpath]  # fmt: skip
        shares_classes = self._format_storage(jvm, config, _archive_path(jars, java, "format"))
        broker_archive = _archive_path(jars, java, "broker")
        if shares_classes:
            jvm += _archive_flags(broker_archive, self.data_dir / _BROKER_ARCHIVE)
        return self._launch(jvm, config, port, controller_port,
                            broker_archive if shares_classes else None)

    def restart(self) -> str:
        """Stop the broker (SIGTERM, as an operator's restart would) and start it again on the same
        ports with the same data: topics, records and committed offsets survive."""
        if self.state is None:
            raise KafkaLauncherError("the broker is not started")
        port, controller_port = self.state.port, self.state.controller_port
        self.stop()
        jars = resolve_jars(self.settings)
        jvm = [java_executable(), f"-Xmx{self.heap}", *JVM_FLAGS,
               f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
               "-cp", f"{jars}{os.sep}*"]  # fmt: skip
        return self._launch(jvm, self.data_dir / "server.properties", port, controller_port, None)

    def _launch(self, jvm: list[str], config: Path, port: int, controller_port: int,
                broker_archive: Path | None) -> str:
        """Run the broker on formatted storage and wait until a client can use it."""
        started_at = time.time()
        with (self.data_dir / LOG_FILE).open("ab") as log_fh:
            self._popen = subprocess.Popen(
                [*jvm, "kafka.Kafka", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C in the terminal is not meant for the broker
                preexec_fn=_die_with_parent if self.tied_to_parent else None,
            )
        self.state = BrokerState(
            pid=self._popen.pid,
            port=port,
            controller_port=controller_port,
            data_dir=str(self.data_dir),
            version=kafka_version(),
            started_at=started_at,
            cds_archive=str(broker_archive)
            if broker_archive is not None and not broker_archive.is_file()
            else "",
        )
        (self.data_dir / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self.state)))
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "Kafka %s ready at %s (pid %d)", self.state.version, self.bootstrap, self.state.pid
        )
        return self.bootstrap

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``stop_timeout``); idempotent."""
        if self.state is not None and _is_kafka_process(self.state.pid):
            _terminate(self.state.pid, self.stop_timeout, self._popen)
        elif self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
        if self._popen is not None:
            self._popen.wait()
        if self.state is not None and self.state.cds_archive:
            _keep_archive(self.data_dir / _BROKER_ARCHIVE, Path(self.state.cds_archive))
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / STATE_FILE).unlink()
        self._popen = None

    def log_tail(self) -> str:
        """The last lines of ``broker.log``."""
        return _log_tail(self.data_dir)

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- steps --------------------------------------------------------------------------------

    def _clear_data_dir(self) -> None:
        # Wipe only what is empty or was a broker's folder, never a folder someone mistyped.
        if self.data_dir.exists():
            entries = {p.name for p in self.data_dir.iterdir()}
            if entries and not entries & {"server.properties", STATE_FILE, LOG_FILE}:
                raise KafkaLauncherError(
                    f"{self.data_dir} is not empty and is no broker's folder: refusing to wipe it"
                )
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)

    def _write_config(self, port: int, controller_port: int) -> Path:
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "true",
            # One node: every internal topic has one replica.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Tests start and stop consumer groups all the time: rebalance at once.
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            # The log cleaner (compacted topics) keeps its key map on the heap: 128 MiB by
            # default, which made the broker's live heap 162 MiB (46 MiB with 16), above G1's
            # 35% threshold, so it ran a concurrent marking cycle every few seconds. 16 MiB
            # still maps about 600,000 keys per cleaning pass (24 bytes a key, 90% full).
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            **(self.broker_config or {}),
        }
        config = self.data_dir / "server.properties"
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        return config

    def _format_storage(self, jvm: list[str], config: Path, archive: Path) -> bool:
        """Format the storage; return whether this JVM accepted the class-sharing flags."""
        # `kafka-storage.sh format --standalone`: a one-voter dynamic quorum.
        tool = ["kafka.tools.StorageTool", "format", "--standalone",
                "--cluster-id", _random_cluster_id(), "--config", str(config)]  # fmt: skip
        pending = self.data_dir / _FORMAT_ARCHIVE
        cds = _archive_flags(archive, pending)
        cmd = [*jvm, *cds, *tool]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.data_dir, check=False)
        shares_classes = True
        if proc.returncode != 0 and not (self.data_dir / "data").exists():
            # A JVM that cannot share classes at all (no base archive) refuses the CDS flags:
            # format once more without them, before giving up.
            cmd = [c for c in cmd if c not in cds]
            proc = subprocess.run(
                cmd, capture_output=True, text=True, cwd=self.data_dir, check=False
            )
            shares_classes = False
        _keep_archive(pending, archive)
        (self.data_dir / LOG_FILE).write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise KafkaLauncherError(
                f"formatting the broker's storage failed (exit {proc.returncode})",
                log_tail=self.log_tail(),
            )
        return shares_classes

    def _wait_ready(self) -> None:
        assert self._popen is not None and self.state is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            code = self._popen.poll()
            if code is not None:
                raise KafkaLauncherError(
                    f"the Kafka broker exited with status {code} while starting",
                    log_tail=self.log_tail(),
                )
            if _port_open(self.state.port):
                try:
                    check_cluster(self.state.bootstrap, timeout=2.0)
                    return
                except KafkaLauncherError:
                    pass
            time.sleep(0.2)
        raise KafkaLauncherError(
            f"the Kafka broker did not answer at {self.state.bootstrap} within "
            f"{self.startup_timeout:.0f}s",
            log_tail=self.log_tail(),
        )


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when my parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
