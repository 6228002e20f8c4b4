"""A broker restart in mid-stream: the worker rides it out, and every event gets its answer."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

from operator_harness import OperatorRun, rows

from streamcascade.kafka import LocalKafka


def test_a_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    broker = LocalKafka(tmp_path / "broker", tied_to_parent=True)
    bootstrap = broker.start()
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def new_topic(partitions: int = 1, prefix: str | None = None, **config: str) -> str:
        name = f"{prefix or 'topic'}-{uuid.uuid4().hex[:10]}"
        spec = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
        admin.create_topics([spec])[name].result(timeout=30)
        return name

    stream = rows(600)
    run = OperatorRun(bootstrap, new_topic, tmp_path / "run", partitions=2,
                      worker_args=("--warmup", "50"))
    (tmp_path / "run").mkdir()
    try:
        worker = run.start_worker()
        run.wait_ready()
        run.produce(run.event_records(stream[:200]))
        assert run.wait_answered({r.id for r in stream[:200]}, timeout=60), run.logs()
        # The rest of the stream is produced while the broker stops and starts again (the
        # producer holds what it cannot deliver meanwhile).
        producing = threading.Thread(
            target=run.produce, args=(run.event_records(stream[200:]),), kwargs={"rate": 100})
        producing.start()
        time.sleep(1.0)
        down_at = time.monotonic()
        broker.restart()
        down_s = time.monotonic() - down_at
        producing.join(120)
        assert run.wait_answered({r.id for r in stream}, timeout=120), (
            len({r.id for r in stream} - run.answered()), run.logs())
        assert worker.poll() is None, run.logs()  # the worker rode the restart out
    finally:
        run.stop_all()
        broker.stop()
    assert {r.id for r in stream} <= set(run.outputs)
    # While the broker was away the worker retried at its backoff, not in a tight loop (that
    # logged about 1,800 failed metadata updates a second).
    failed = run.logs_whole().count("Unable to update metadata")
    assert failed / down_s < 50, (failed, down_s)
