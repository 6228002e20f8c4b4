"""The launcher against real JVMs: the CLI's up/status/down, a broker that dies while starting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka import LocalKafka, check_cluster, find_free_port, running_broker
from streamcascade.kafka.process import STATE_FILE


def _cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    # Without STREAMCASCADE_BOOTSTRAP, so that `up` starts a local broker even when the session
    # runs against an existing cluster.
    env = {k: v for k, v in os.environ.items() if k != "STREAMCASCADE_BOOTSTRAP"}
    return subprocess.run(
        [sys.executable, "-m", "streamcascade", "kafka", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] in {"Z", "X"}


def test_cli_up_status_down_beside_the_session_broker(kafka_bootstrap: str, tmp_path: Path) -> None:
    folder = tmp_path / "cli-broker"
    up = _cli("up", "--data-dir", str(folder))
    try:
        assert up.returncode == 0, up.stderr
        address = up.stdout.strip()
        assert address.startswith("127.0.0.1:") and address != kafka_bootstrap
        assert check_cluster(address) == 1
        state = running_broker(folder)
        assert state is not None and state.bootstrap == address

        again = _cli("up", "--data-dir", str(folder))
        assert again.returncode == 0 and again.stdout.strip() == address
        assert "already running" in again.stderr

        status = _cli("status", "--data-dir", str(folder))
        assert status.returncode == 0, status.stdout + status.stderr
        assert address in status.stdout and "answers" in status.stdout
    finally:
        down = _cli("down", "--data-dir", str(folder))
    assert down.returncode == 0, down.stderr
    assert _pid_gone(state.pid)
    assert not (folder / STATE_FILE).exists()
    assert check_cluster(kafka_bootstrap) >= 1  # the other broker is untouched
    status = _cli("status", "--data-dir", str(folder))
    assert status.returncode == 1 and "not running" in status.stdout


def _time_wait_on(port: int) -> bool:
    """Whether a TCP connection whose local port is ``port`` lingers in TIME-WAIT (state 06)."""
    # The JVM listens on an IPv6 socket (127.0.0.1 mapped), so its connections are in tcp6.
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "06":
                return True
    return False


def test_up_again_on_the_same_port_right_after_down(tmp_path: Path) -> None:
    folder = tmp_path / "same-port"
    port = find_free_port()
    try:
        first = _cli("up", "--data-dir", str(folder), "--port", str(port))
        assert first.returncode == 0, first.stderr
        # A client still connected when the broker stops (a worker, say) leaves the broker's
        # end of the connection in TIME-WAIT on the port, for a minute.
        with socket.create_connection(("127.0.0.1", port)):
            down = _cli("down", "--data-dir", str(folder))
            assert down.returncode == 0, down.stderr
        deadline = time.monotonic() + 5.0
        while not _time_wait_on(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _time_wait_on(port), "the fault this test is about did not happen"

        again = _cli("up", "--data-dir", str(folder), "--port", str(port))
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == f"127.0.0.1:{port}"
        assert check_cluster(again.stdout.strip()) == 1
    finally:
        _cli("down", "--data-dir", str(folder))


def test_up_with_bootstrap_only_checks_the_cluster(kafka_bootstrap: str) -> None:
    up = _cli("up", "--bootstrap", kafka_bootstrap)
    assert up.returncode == 0, up.stderr
    assert up.stdout.strip() == kafka_bootstrap


def test_up_with_a_dead_bootstrap_fails_clearly(tmp_path: Path) -> None:
    up = _cli("up", "--bootstrap", "127.0.0.1:1", "--timeout", "3")
    assert up.returncode != 0
    assert "no Kafka broker answered at 127.0.0.1:1" in up.stderr


def test_broker_dying_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "doomed")
    killed: list[int] = []

    def kill_once_started() -> None:
        # A real fault: the JVM is killed as soon as its pid is recorded.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                pid = json.loads((tmp_path / "doomed" / STATE_FILE).read_text())["pid"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.02)
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return

    killer = threading.Thread(target=kill_once_started)
    killer.start()
    with pytest.raises(KafkaLauncherError, match="exited with status -9 while starting") as info:
        broker.start()
    killer.join()
    assert killed and _pid_gone(killed[0])
    assert "broker log (tail)" in str(info.value) and info.value.log_tail


def test_too_small_heap_fails_with_the_jvm_message(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "tiny", heap="1k")
    with pytest.raises(KafkaLauncherError, match="formatting the broker's storage failed") as info:
        broker.start()
    assert "heap" in info.value.log_tail.lower()


def test_startup_timeout_stops_the_broker_and_says_so(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path / "slow", startup_timeout=0.5)
    with pytest.raises(KafkaLauncherError, match=r"did not answer at 127\.0\.0\.1:\d+ within"):
        broker.start()
    assert broker.state is not None and _pid_gone(broker.state.pid)
    assert running_broker(tmp_path / "slow") is None
