"""``streamcascade bench``: benchmarks that compare against a baseline in the same run."""

from __future__ import annotations

import click

from streamcascade.commands import bench_kafka, bench_llm, bench_onnx, bench_river


@click.group()
def bench() -> None:
    """Benchmarks, each against its baseline in the same run, written as JSON."""


bench.add_command(bench_onnx.command)
bench.add_command(bench_llm.command)
bench.add_command(bench_kafka.command)
bench.add_command(bench_river.command)
