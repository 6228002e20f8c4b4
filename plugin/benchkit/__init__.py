"""Tools of the benchmarks, the demo and the integration tests, kept apart from the operator.

:mod:`.stream_io` holds the Kafka clients around a running worker (producers, readers, worker
subprocesses, their CPU times); :mod:`.passthrough` is the agent that does everything the
operator does around the model and nothing else, the baseline of ``streamcascade bench kafka``;
:mod:`.fault_server` is an LLM endpoint that misbehaves on cue.
"""
