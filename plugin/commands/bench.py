"""``streamcascade bench``: benchmarks that compare against a baseline in the same run."""

from __future__ import annotations

import click

from streamcascade.commands import (
    bench_flood,
    bench_guard,
    bench_kafka,
    bench_llm,
    bench_llm_faults,
    bench_onnx,
    bench_river,
    bench_train,
)


@click.group()
def bench() -> None:
    """Benchmarks, each against its baseline in the same run, written as JSON."""


bench.add_command(bench_onnx.command)
bench.add_command(bench_llm.command)
bench.add_command(bench_llm_faults.command)
bench.add_command(bench_kafka.command)
bench.add_command(bench_river.command)
bench.add_command(bench_train.command)
bench.add_command(bench_guard.command)
bench.add_command(bench_flood.command)
