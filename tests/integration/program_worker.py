"""A worker process that serves a built-in program through ``streamcascade.attach``.

The same operator that serves a cascade, installed into a user's own Faust app with the public
``attach``: the program is only a :class:`~streamcascade.models.protocol.StreamModel`. Run as
``python program_worker.py --bootstrap ... --app-id ... --input ... --program hate_gate ...``;
the state signing key comes from ``STREAMCASCADE_STATE_SIGNING_KEY``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faust

from streamcascade import attach
from streamcascade.commands.worker import make_app, operator_logging
from streamcascade.models.programs import CompiledProgram, ProgramConfig
from streamcascade.models.programs.builtin import Sources, build_program
from streamcascade.models.tasks import TASKS
from streamcascade.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser()
    for flag in ("bootstrap", "app-id", "input", "output", "feedback", "dlq", "state-topic",
                 "program", "dataset", "task"):
        parser.add_argument(f"--{flag}", required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--budget", type=float)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()
    # Small batches and quick state publishing: the tests' streams are short.
    settings = Settings(app_id=args.app_id, bootstrap=args.bootstrap, batch_time_s=0.02,
                        learn_batch_time_s=0.2, publish_interval_s=0.5)
    task = TASKS[args.task]
    program = build_program(args.program, task, Sources(dataset=Path(args.dataset), onnx=False))
    model = CompiledProgram(program, ProgramConfig(budget=args.budget, warmup=args.warmup))
    app = make_app(settings, args.bootstrap)
    attach(app, model, source=args.input, sink=args.output, feedback=args.feedback,
           dlq=args.dlq, state_topic=args.state_topic, settings=settings,
           metrics_port=args.metrics_port)
    runner = faust.Worker(app, loglevel="info", quiet=True,
                          logging_config=operator_logging("info"))
    runner.spinner = None
    runner.execute_from_commandline()


if __name__ == "__main__":
    main()
