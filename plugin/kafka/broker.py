"""A local, single-node Apache Kafka broker: the real thing, started from the cached jars.

``kafka.Kafka`` runs as a combined KRaft broker and controller on 127.0.0.1, in its own data
directory, which also holds its configuration, its log and its state file.

Examples
--------
>>> with LocalKafka(data_dir=tmp) as broker:          # doctest: +SKIP
...     produce_to(broker.bootstrap)
"""

from __future__ import annotations

import base64
import logging
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka.cds import (
    BROKER_ARCHIVE,
    FORMAT_ARCHIVE,
    archive_flags,
    archive_path,
    keep_archive,
)
from streamcascade.kafka.config import DEFAULT_HEAP, SERVER_PROPERTIES, jvm_command, write_config
from streamcascade.kafka.jars import kafka_version, resolve_jars
from streamcascade.kafka.java import java_executable
from streamcascade.kafka.network import check_cluster, check_port_free, find_free_port, port_open
from streamcascade.kafka.process import (
    LOG_FILE,
    STATE_FILE,
    BrokerState,
    die_with_parent,
    forget_state,
    is_kafka_process,
    log_tail,
    running_broker,
    terminate,
)
from streamcascade.settings import Settings

log = logging.getLogger(__name__)


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
        check_port_free(port)
        check_port_free(controller_port)
        self._clear_data_dir()
        java = java_executable()
        jars = resolve_jars(self.settings)
        config = write_config(self.data_dir, port, controller_port, self.broker_config)
        jvm = jvm_command(java, self.heap, jars, self.data_dir)
        shares_classes = self._format_storage(jvm, config, archive_path(jars, java, "format"))
        broker_archive = archive_path(jars, java, "broker")
        if shares_classes:
            jvm += archive_flags(broker_archive, self.data_dir / BROKER_ARCHIVE)
        return self._launch(jvm, config, port, controller_port,
                            broker_archive if shares_classes else None)

    def restart(self) -> str:
        """Stop the broker (SIGTERM, as an operator's restart would) and start it again on the same
        ports with the same data: topics, records and committed offsets survive."""
        if self.state is None:
            raise KafkaLauncherError("the broker is not started")
        port, controller_port = self.state.port, self.state.controller_port
        self.stop()
        jvm = jvm_command(java_executable(), self.heap, resolve_jars(self.settings), self.data_dir)
        return self._launch(jvm, self.data_dir / SERVER_PROPERTIES, port, controller_port, None)

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``stop_timeout``); idempotent."""
        if self.state is not None and is_kafka_process(self.state.pid):
            terminate(self.state.pid, self.stop_timeout, self._popen)
        elif self._popen is not None and self._popen.poll() is None:
            self._popen.kill()
        if self._popen is not None:
            self._popen.wait()
        if self.state is not None and self.state.cds_archive:
            keep_archive(self.data_dir / BROKER_ARCHIVE, Path(self.state.cds_archive))
        forget_state(self.data_dir)
        self._popen = None

    def log_tail(self) -> str:
        """The last lines of ``broker.log``."""
        return log_tail(self.data_dir)

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
            if entries and not entries & {SERVER_PROPERTIES, STATE_FILE, LOG_FILE}:
                raise KafkaLauncherError(
                    f"{self.data_dir} is not empty and is no broker's folder: refusing to wipe it"
                )
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True)

    def _format_storage(self, jvm: list[str], config: Path, archive: Path) -> bool:
        """Format the storage; return whether this JVM accepted the class-sharing flags."""
        # `kafka-storage.sh format --standalone`: a one-voter dynamic quorum.
        tool = ["kafka.tools.StorageTool", "format", "--standalone",
                "--cluster-id", random_cluster_id(), "--config", str(config)]  # fmt: skip
        pending = self.data_dir / FORMAT_ARCHIVE
        cds = archive_flags(archive, pending)
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
        keep_archive(pending, archive)
        (self.data_dir / LOG_FILE).write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise KafkaLauncherError(
                f"formatting the broker's storage failed (exit {proc.returncode})",
                log_tail=self.log_tail(),
            )
        return shares_classes

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
                preexec_fn=die_with_parent if self.tied_to_parent else None,
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
        self.state.write()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(
            "Kafka %s ready at %s (pid %d)", self.state.version, self.bootstrap, self.state.pid
        )
        return self.bootstrap

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
            if port_open(self.state.port):
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


def random_cluster_id() -> str:
    """A new cluster id: Kafka's Uuid in its base64 form."""
    # Kafka's own generator skips ids starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text
