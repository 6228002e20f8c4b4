"""The engines a relational model trains on: DuckDB (embedded, the default) and Apache Spark.

Both take the same queries, written in DuckDB's dialect (:mod:`.sql`), and exchange columns as
numpy arrays. Each engine's package is imported when the engine is opened, never before: the
core imports neither.

A Spark session is costly to start (seconds), so one per master URL is kept for the process and
reused; Spark reads what it is given from Parquet files written by DuckDB and hands results back
the same way, so no pandas or Arrow is needed.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from streamcascade.models.errors import ConfigurationError
from streamcascade.models.relational.sql import transpile

ENGINES = ("duckdb", "spark")
Columns = dict[str, np.ndarray]


class Engine(ABC):
    """Tables in, queries run, columns out. Queries are in DuckDB's dialect."""

    name: str
    dialect: str

    def text(self, query: str) -> str:
        """``query`` as this engine reads it."""
        return transpile(query, self.dialect)

    @abstractmethod
    def put(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
        """Store ``columns`` (equal lengths) as table ``name``, replacing any before."""

    @abstractmethod
    def fetch(self, query: str, params: Mapping[str, Any] | None = None) -> Columns:
        """The result of ``query`` as numpy columns."""

    @abstractmethod
    def materialize(self, name: str, query: str,
                    params: Mapping[str, Any] | None = None) -> None:
        """Compute ``query`` now and keep its result as table ``name``."""

    @abstractmethod
    def drop(self, name: str) -> None:
        """Forget table ``name`` (nothing happens if there is none)."""

    @abstractmethod
    def close(self) -> None:
        """Release what this engine holds."""


class DuckDBEngine(Engine):
    name = "duckdb"
    dialect = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None) -> None:
        try:
            import duckdb
        except ImportError:
            raise ConfigurationError("the duckdb engine needs the duckdb package: "
                                     "pip install duckdb") from None
        self.con = duckdb.connect()
        self.con.execute("SET enable_progress_bar = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if memory_limit:
            self.con.execute(f"SET memory_limit = '{memory_limit}'")

    def put(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
        view = f"_in_{uuid.uuid4().hex}"
        self.con.register(view, {k: np.ascontiguousarray(v) for k, v in columns.items()})
        try:
            self.con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM {view}")
        finally:
            self.con.unregister(view)

    def fetch(self, query: str, params: Mapping[str, Any] | None = None) -> Columns:
        result = self.con.execute(query, dict(params)) if params else self.con.execute(query)
        return {k: np.asarray(v) for k, v in result.fetchnumpy().items()}

    def materialize(self, name: str, query: str,
                    params: Mapping[str, Any] | None = None) -> None:
        statement = f"CREATE OR REPLACE TABLE {name} AS {query}"
        if params:
            self.con.execute(statement, dict(params))
        else:
            self.con.execute(statement)

    def drop(self, name: str) -> None:
        self.con.execute(f"DROP TABLE IF EXISTS {name}")

    def close(self) -> None:
        self.con.close()


_SESSIONS: dict[str, Any] = {}


def spark_session(master: str, partitions: int | None = None) -> Any:
    """The process's Spark session for ``master`` (started on first use, stopped at exit)."""
    if master in _SESSIONS:
        return _SESSIONS[master]
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise ConfigurationError("the spark engine needs pyspark: pip install "
                                 "'streamcascade[spark]' (and a Java runtime)") from None
    for other in list(_SESSIONS):  # a JVM holds one active session: a new master replaces it
        _SESSIONS.pop(other).stop()
    cores = _local_cores(master)
    try:
        session = (SparkSession.builder.master(master).appName("streamcascade-train")
                   .config("spark.sql.shuffle.partitions", str(partitions or cores or 4))
                   .config("spark.ui.enabled", "false")
                   .config("spark.ui.showConsoleProgress", "false")
                   .config("spark.driver.memory", "4g")
                   # A step's plan is large; Spark keeps the last executions' plans for its UI.
                   .config("spark.sql.ui.retainedExecutions", "5")
                   .config("spark.ui.retainedJobs", "20")
                   .config("spark.ui.retainedStages", "50")
                   # Each join of a step's small relations is broadcast; small memory pages,
                   # and broadcasts collected every minute, keep them from filling the heap.
                   .config("spark.buffer.pageSize", "2m")
                   .config("spark.cleaner.periodicGC.interval", "1min")
                   .config("spark.sql.session.timeZone", "UTC")
                   .getOrCreate())
    except Exception as exc:  # the JVM's errors arrive as many types
        raise ConfigurationError(f"could not start Spark at {master!r}: {exc}") from None
    session.sparkContext.setLogLevel("ERROR")
    _SESSIONS[master] = session
    return session


def _local_cores(master: str) -> int | None:
    if master.startswith("local[") and master.endswith("]"):
        inner = master[len("local["):-1]
        return os.cpu_count() if inner == "*" else int(inner) if inner.isdigit() else None
    return 1 if master == "local" else None


@atexit.register
def _stop_sessions() -> None:
    for master in list(_SESSIONS):
        _SESSIONS.pop(master).stop()


class SparkEngine(Engine):
    name = "spark"
    dialect = "spark"

    def __init__(self, master: str = "local[2]", partitions: int | None = None) -> None:
        import duckdb  # writes and reads the Parquet files Spark exchanges

        self.spark = spark_session(master, partitions)
        self.master = master
        self._local = duckdb.connect()
        self._dir = Path(tempfile.mkdtemp(prefix="streamcascade-spark-"))
        self._frames: dict[str, Any] = {}

    def put(self, name: str, columns: Mapping[str, np.ndarray]) -> None:
        path = self._dir / f"{name}-{uuid.uuid4().hex}.parquet"
        view = f"_in_{uuid.uuid4().hex}"
        self._local.register(view, {k: np.ascontiguousarray(v) for k, v in columns.items()})
        try:
            self._local.execute(f"COPY (SELECT * FROM {view}) TO '{path}' (FORMAT parquet)")
        finally:
            self._local.unregister(view)
        self._keep(name, self.spark.read.parquet(str(path)).cache())

    def _frame(self, query: str, params: Mapping[str, Any] | None) -> Any:
        text = self.text(query)
        return self.spark.sql(text, args=dict(params)) if params else self.spark.sql(text)

    def fetch(self, query: str, params: Mapping[str, Any] | None = None) -> Columns:
        path = self._dir / f"out-{uuid.uuid4().hex}"
        frame = self._frame(query, params)
        frame.write.parquet(str(path))
        try:
            result = self._local.execute(
                f"SELECT * FROM read_parquet('{path}/*.parquet')").fetchnumpy()
        except Exception:  # no part files: an empty result; its columns come from the frame
            result = {c: np.empty(0) for c in frame.columns}
        shutil.rmtree(path, ignore_errors=True)
        return {k: np.asarray(v) for k, v in result.items()}

    def materialize(self, name: str, query: str,
                    params: Mapping[str, Any] | None = None) -> None:
        # A checkpoint cuts the lineage: step n's plan does not carry steps 1..n-1.
        self._keep(name, self._frame(query, params).localCheckpoint(eager=True))

    def _keep(self, name: str, frame: Any) -> None:
        frame.createOrReplaceTempView(name)
        old = self._frames.get(name)
        self._frames[name] = frame
        if old is not None:
            old.unpersist()

    def drop(self, name: str) -> None:
        frame = self._frames.pop(name, None)
        if frame is not None:
            self.spark.catalog.dropTempView(name)
            frame.unpersist()

    def close(self) -> None:
        for name, frame in self._frames.items():
            self.spark.catalog.dropTempView(name)
            frame.unpersist()
        self._frames.clear()
        self._local.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def open_engine(name: str, *, master: str = "local[2]", threads: int | None = None) -> Engine:
    """An engine by name: ``duckdb`` (``threads`` of this process) or ``spark`` (at ``master``:
    ``local[n]``, or a cluster's URL)."""
    if name == "duckdb":
        return DuckDBEngine(threads=threads)
    if name == "spark":
        return SparkEngine(master=master)
    raise ConfigurationError(f"unknown engine {name!r}; expected one of {ENGINES}")
