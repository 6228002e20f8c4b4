"""Shared pytest set-up: tier markers by folder, a real Kafka broker, fresh topics.

Tiers
    ``tests/unit/`` is marked ``unit``, ``tests/operator/`` ``operator``, ``tests/integration/``
    ``integration``; select with ``pytest -m unit`` and so on.
Broker
    ``kafka_bootstrap`` (session-scoped) is ``STREAMCASCADE_BOOTSTRAP`` when that names an existing
    cluster; otherwise the project's launcher starts a local Apache Kafka broker for the session
    (jars from Maven Central, fetched once into the cache) and stops it at the end. Nothing is
    skipped when no broker is around: the launcher starts one, or the tests fail.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from streamcascade.kafka import LocalKafka, check_cluster
from streamcascade.settings import Settings

TESTS_ROOT = Path(__file__).resolve().parent
TIERS = ("unit", "operator", "integration")
_FAUST_DATADIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Keep Faust's data folders out of the checkout.

    A Faust app without an explicit ``datadir`` writes ``<app id>-data/`` into the working
    directory; ``APP_DATADIR`` (a Faust setting) moves them into one folder per session.
    """
    if "APP_DATADIR" not in os.environ:
        folder = tempfile.mkdtemp(prefix="streamcascade-faust-")
        config.stash[_FAUST_DATADIR] = folder
        os.environ["APP_DATADIR"] = os.path.join(folder, "{conf.name}-data")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(_FAUST_DATADIR, None)
    if folder is not None:
        os.environ.pop("APP_DATADIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with the tier of the folder it lives in."""
    for item in items:
        try:
            folder = item.path.resolve().relative_to(TESTS_ROOT).parts[0]
        except ValueError:
            continue
        if folder in TIERS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Kafka cluster that answers: an existing one, or a local broker."""
    existing = Settings().bootstrap
    if existing:
        check_cluster(existing, timeout=30.0)
        yield existing
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-broker"), tied_to_parent=True)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


NewTopic = Callable[..., str]


@pytest.fixture
def new_topic(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Iterator[NewTopic]:
    """A factory: ``new_topic(partitions=1, prefix=None)`` creates a uniquely named topic.

    The name starts with the test's name (or ``prefix``), so the broker's log says which test a
    topic belongs to. The topics are deleted after the test.
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin import NewTopic as AdminNewTopic

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(partitions: int = 1, prefix: str | None = None, **config: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", prefix or request.node.name)[:80].strip("-")
        name = f"{stem}-{uuid.uuid4().hex[:10]}"
        spec = AdminNewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        admin.create_topics([spec])[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created, operation_timeout=10).values():
            # A test may have deleted its topic already: that is no failure.
            with contextlib.suppress(Exception):
                future.result(timeout=15)
