"""The ``streamcascade`` command line: one group, one subcommand module per area.

Each area's commands live in ``streamcascade.commands.<area>`` and are added here, so this file
stays the table of contents of the CLI.
"""

from __future__ import annotations

import logging
import sys

import click
from pydantic import ValidationError

from streamcascade import __version__
from streamcascade.commands import bench, kafka, llm, onnx, program, replay, train, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="streamcascade")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Answer Kafka event streams with an online-learned cascade of models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


cli.add_command(kafka.kafka)
cli.add_command(replay.replay)
cli.add_command(llm.llm)
cli.add_command(onnx.onnx)
cli.add_command(bench.bench)
cli.add_command(worker.worker)
cli.add_command(worker.demo)
cli.add_command(program.program)
cli.add_command(train.train)


def main() -> None:
    try:
        cli()
    except ValidationError as exc:  # a STREAMCASCADE_* variable no command could use
        click.echo(f"Error: a setting from the environment is invalid: {exc}", err=True)
        sys.exit(2)
