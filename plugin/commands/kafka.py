"""``streamcascade kafka``: fetch, start, inspect and stop a local Kafka broker.

``up`` prints only the bootstrap address on stdout, so ``B=$(streamcascade kafka up)`` works;
everything else goes to stderr. With ``--bootstrap`` (or ``STREAMCASCADE_BOOTSTRAP``) the commands
talk to that existing cluster instead and start nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from streamcascade.errors import KafkaLauncherError
from streamcascade.kafka import (
    LocalKafka,
    check_cluster,
    read_state,
    resolve_jars,
    running_broker,
    stop_broker,
)
from streamcascade.settings import Settings


def instance_dir(name: str, settings: Settings) -> Path:
    """The data folder of the named local broker."""
    return Path(settings.cache_dir).expanduser() / "kafka" / "instances" / name


def _existing_cluster(bootstrap: str | None, settings: Settings) -> str | None:
    return bootstrap or settings.bootstrap


_name_option = click.option(
    "--name", default="default", show_default=True, help="Which local broker (several may run)."
)
_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The broker's folder (default: <cache_dir>/kafka/instances/<name>).",
)
_bootstrap_option = click.option(
    "--bootstrap",
    metavar="HOST:PORT",
    help="Use this existing cluster instead of a local broker [env STREAMCASCADE_BOOTSTRAP].",
)


@click.group("kafka")
def kafka() -> None:
    """A local Apache Kafka broker (KRaft, one node) for the demo and the tests."""


@kafka.command()
def fetch() -> None:
    """Resolve the pinned broker jars from Maven Central into the cache (once)."""
    try:
        path = resolve_jars(Settings(), quiet=False)
    except KafkaLauncherError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(str(path))


@kafka.command()
@_name_option
@_dir_option
@click.option("--port", type=int, help="Client port (default: a free one).")
@click.option("--controller-port", type=int, help="KRaft controller port (default: a free one).")
@click.option("--heap", default="512m", show_default=True, help="Maximum JVM heap.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for readiness.")
@_bootstrap_option
def up(
    name: str,
    data_dir: Path | None,
    port: int | None,
    controller_port: int | None,
    heap: str,
    timeout: float,
    bootstrap: str | None,
) -> None:
    """Start a broker on 127.0.0.1 and print its bootstrap address.

    A broker already running under the same name is left as it is and its address printed.
    Each start of a stopped broker begins with empty storage.
    """
    settings = Settings()
    existing = _existing_cluster(bootstrap, settings)
    try:
        if existing:
            brokers = check_cluster(existing, timeout=timeout)
            click.echo(f"using the existing cluster at {existing} ({brokers} brokers)", err=True)
            click.echo(existing)
            return
        folder = data_dir or instance_dir(name, settings)
        state = running_broker(folder)
        if state is not None:
            click.echo(f"already running (pid {state.pid}) in {folder}", err=True)
            click.echo(state.bootstrap)
            return
        began = time.monotonic()
        broker = LocalKafka(
            folder,
            port=port,
            controller_port=controller_port,
            heap=heap,
            startup_timeout=timeout,
            tied_to_parent=False,
            settings=settings,
        )
        address = broker.start()
    except KafkaLauncherError as exc:
        raise click.ClickException(str(exc)) from exc
    assert broker.state is not None
    click.echo(
        f"Kafka {broker.state.version} ready in {time.monotonic() - began:.1f}s "
        f"(pid {broker.state.pid}, log {folder / 'broker.log'})",
        err=True,
    )
    click.echo(address)


@kafka.command()
@_name_option
@_dir_option
@click.option("--timeout", default=20.0, show_default=True, help="Seconds before SIGKILL.")
def down(name: str, data_dir: Path | None, timeout: float) -> None:
    """Stop the local broker: SIGTERM, then SIGKILL after the timeout."""
    folder = data_dir or instance_dir(name, Settings())
    try:
        stopped = stop_broker(folder, timeout=timeout)
    except KafkaLauncherError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("stopped" if stopped else f"no broker was running in {folder}", err=True)


@kafka.command()
@_name_option
@_dir_option
@_bootstrap_option
def status(name: str, data_dir: Path | None, bootstrap: str | None) -> None:
    """Say whether the broker runs and answers; exit 1 when it does not."""
    settings = Settings()
    existing = _existing_cluster(bootstrap, settings)
    if existing:
        try:
            brokers = check_cluster(existing, timeout=10.0)
        except KafkaLauncherError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"existing cluster {existing}: {brokers} brokers answer")
        return
    folder = data_dir or instance_dir(name, settings)
    state = running_broker(folder)
    if state is None:
        recorded = read_state(folder)
        why = "its process is gone" if recorded else "none was started"
        click.echo(f"not running ({why}; folder {folder})")
        raise SystemExit(1)
    rss = state.rss_bytes()
    try:
        check_cluster(state.bootstrap, timeout=5.0)
        answers = "answers"
    except KafkaLauncherError:
        answers = "does NOT answer"
    memory = f"RSS {rss / 2**20:.0f} MiB" if rss else "RSS unknown"
    click.echo(
        f"running: bootstrap {state.bootstrap}, controller port {state.controller_port}, "
        f"pid {state.pid}, Kafka {state.version}, {memory}, "
        f"up {time.time() - state.started_at:.0f}s, {answers}; folder {folder}"
    )
    if answers != "answers":
        raise SystemExit(1)
