"""The launcher's checks that need no broker: errors come early and say what is wrong."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from pathlib import Path

import pytest

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka import (
    BrokerState,
    LocalKafka,
    broker_pom,
    find_free_port,
    jars_dir,
    java_executable,
    kafka_version,
    read_state,
    resolve_jars,
    running_broker,
    stop_broker,
)
from streamcascade.kafka.broker import random_cluster_id
from streamcascade.kafka.network import check_port_free
from streamcascade.kafka.process import STATE_FILE
from streamcascade.settings import Settings


def test_pinned_version_is_kafka_4_1() -> None:
    assert re.fullmatch(r"4\.1\.\d+", kafka_version())


def test_jars_are_cached_per_version_under_cache_dir(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    assert jars_dir(settings) == tmp_path / "kafka" / kafka_version()


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMCASCADE_CACHE_DIR", str(tmp_path))
    assert jars_dir() == tmp_path / "kafka" / kafka_version()


def test_pom_names_broker_and_one_logging_backend() -> None:
    text = broker_pom().read_text()
    assert "<artifactId>kafka_2.13</artifactId>" in text
    assert "<artifactId>log4j-slf4j-impl</artifactId>" in text
    assert "slf4j-reload4j" not in text and "slf4j-simple" not in text


def test_cluster_ids_are_kafka_uuids() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for text in ids:
        assert len(text) == 22 and not text.startswith("-")
        assert len(base64.urlsafe_b64decode(text + "==")) == 16


def test_free_port_can_be_bound() -> None:
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        broker = LocalKafka(tmp_path / "b", port=port, settings=Settings(cache_dir=tmp_path))
        with pytest.raises(KafkaLauncherError, match=f"port {port} .* in use"):
            broker.start()
    assert not (tmp_path / "b").exists()


def test_connections_in_time_wait_leave_the_port_free() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM listens
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        server_end, _ = listener.accept()
        server_end.close()  # a stopping broker closes first: its end goes to TIME-WAIT
        client.close()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # the fault: a plain bind trips on TIME-WAIT
    check_port_free(port)


def test_a_foreign_folder_is_never_wiped(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    broker = LocalKafka(tmp_path, settings=Settings(cache_dir=tmp_path / "cache"))
    with pytest.raises(KafkaLauncherError, match="refusing to wipe"):
        broker.start()
    assert precious.read_text() == "keep me"


def test_missing_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without java
    with pytest.raises(KafkaLauncherError, match="Java is not installed"):
        java_executable()


def test_java_home_without_java_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(KafkaLauncherError, match="Java 17"):
        java_executable()


def test_missing_maven_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without mvn
    with pytest.raises(KafkaLauncherError, match="Maven"):
        resolve_jars(Settings(cache_dir=tmp_path / "empty-cache"))
    assert not (tmp_path / "empty-cache" / "kafka" / kafka_version()).exists()


def test_installed_java_is_recent_enough() -> None:
    assert Path(java_executable()).is_file()


def test_state_of_a_gone_process_is_not_running(tmp_path: Path) -> None:
    state = BrokerState(
        pid=2**22 + 12345,  # above Linux's pid_max default: no such process
        port=1,
        controller_port=2,
        data_dir=str(tmp_path),
        version=kafka_version(),
        started_at=0.0,
    )
    (tmp_path / STATE_FILE).write_text(json.dumps(state.__dict__))
    assert read_state(tmp_path) == state
    assert running_broker(tmp_path) is None
    assert stop_broker(tmp_path) is False
    assert not (tmp_path / STATE_FILE).exists()


def test_a_reused_pid_is_not_taken_for_the_broker(tmp_path: Path) -> None:
    # This very process is alive, but it is no Kafka broker: never signal it.
    state = BrokerState(os.getpid(), 1, 2, str(tmp_path), kafka_version(), 0.0)
    (tmp_path / STATE_FILE).write_text(json.dumps(state.__dict__))
    assert running_broker(tmp_path) is None
    assert stop_broker(tmp_path) is False


def test_garbled_state_reads_as_none(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    assert read_state(tmp_path) is None
    assert read_state(tmp_path / "missing") is None


def test_bootstrap_before_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaLauncherError, match="not started"):
        _ = LocalKafka(tmp_path).bootstrap
