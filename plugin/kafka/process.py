"""A started broker's process: the ``state.json`` that finds it again, and stopping it.

Each broker lives in its own data directory, which holds its ``state.json`` and ``broker.log``,
so that another process (``streamcascade kafka down``) can find and stop it, and several brokers
can run side by side. A recorded pid counts as the broker only while it still runs
``kafka.Kafka``, so a pid reused by another program is never signalled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka.cds import BROKER_ARCHIVE, keep_archive

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
LOG_FILE = "broker.log"
#: How many lines of a log an error quotes.
LOG_TAIL_LINES = 40


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
        return is_kafka_process(self.pid)

    def rss_bytes(self) -> int | None:
        """Resident memory of the broker's JVM, from ``/proc``; None if unknown."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def write(self) -> None:
        """Record this state in its broker's folder."""
        (Path(self.data_dir) / STATE_FILE).write_text(json.dumps(dataclasses.asdict(self)))


def is_kafka_process(pid: int) -> bool:
    """Whether ``pid`` is a live (not exited) JVM running ``kafka.Kafka``."""
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


def forget_state(data_dir: Path) -> None:
    """Remove the state file of ``data_dir``, if any."""
    with contextlib.suppress(FileNotFoundError):
        (Path(data_dir) / STATE_FILE).unlink()


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
        forget_state(data_dir)
        return False
    terminate(state.pid, timeout)
    if state.cds_archive:
        keep_archive(Path(data_dir) / BROKER_ARCHIVE, Path(state.cds_archive))
    forget_state(data_dir)
    return True


def terminate(pid: int, timeout: float, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the broker ``pid``, SIGKILL it after ``timeout`` seconds; wait until it is gone.

    ``popen`` is given when this process started the broker, which then reaps it.
    """
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
        if not is_kafka_process(pid):
            if popen is not None:  # reap it, so no zombie is left behind
                popen.wait()
            else:  # another process's child: give its reaper (init) a moment
                _wait_reaped(pid, 2.0)
            return True
        time.sleep(0.1)
    return False


def _wait_reaped(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def die_with_parent() -> None:
    """In the child, before exec: SIGTERM me when my parent dies (Linux prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def last_lines(text: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def log_tail(data_dir: Path) -> str:
    """The last lines of the broker's log in ``data_dir``; "" when there is none."""
    try:
        return last_lines((Path(data_dir) / LOG_FILE).read_text(errors="replace"))
    except OSError:
        return ""
