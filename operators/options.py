"""How the operator batches, joins, learns and tunes its worker: every default, written once.

:class:`~streamcascade.settings.Settings` takes its defaults for these options from
:data:`DEFAULTS`, so a default changed here changes everywhere (the settings, their environment
variables, ``streamcascade worker``'s flags, ``attach``).

>>> DEFAULTS.batch_size, DEFAULTS.batch_time_s
(100, 0.01)
>>> STATE_MAX_BYTES // 2**20
64
"""

from __future__ import annotations

from dataclasses import dataclass

#: The largest model state record, and so the state topic's ``max.message.bytes``: a state is one
#: record holding the whole model.
STATE_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OperatorOptions:
    """The operator's options (see :class:`~streamcascade.settings.Settings` for each one's
    setting and environment variable)."""

    #: Events per micro-batch, at most.
    batch_size: int = 100
    #: How long a micro-batch waits for events after its first one arrived. An event waits up to
    #: this long before it is answered, so it is most of a fast answer's latency; under load,
    #: batches fill before it elapses.
    batch_time_s: float = 0.01
    #: Demonstrations per learning step of the learner, at most, and how long it waits for them.
    learn_batch_size: int = 500
    learn_batch_time_s: float = 0.5
    #: Least seconds between two published model states. Each is a full snapshot, written to the
    #: state topic and read back by every worker, and each publication delays the answers around
    #: it: publishing often is a steady cost. Other workers serve the learner's updates this much
    #: later, and a new learner learns at most this much again.
    publish_interval_s: float = 10.0
    #: Share of events whose demonstrations are held back to judge each new model version before
    #: it is published (see :mod:`~streamcascade.operators.publish_gate`; 0 publishes unjudged).
    holdout_share: float = 0.1
    #: How long an event waits for its feedback (and feedback for its event) in the decision log,
    #: and how many of each wait.
    decision_ttl_s: float = 600.0
    decision_log_size: int = 100_000
    #: Write the LLM's answers to the feedback topic (source ``llm``), for the learner to imitate.
    publish_llm_feedback: bool = True
    #: Recent events that the rolling metrics (deferral rates, LLM share, accuracy) cover.
    metrics_window: int = 1000
    #: Longest time (ms) the broker may hold a fetch of the operator's consumer open; see
    #: :func:`~streamcascade.operators.faust_patches.low_latency_fetch`.
    fetch_max_wait_ms: int = 10
    #: Batches written and not yet acknowledged by the broker while the next ones are answered.
    max_in_flight_batches: int = 4
    #: Exempt the objects alive at start-up from the garbage collector; see
    #: :func:`~streamcascade.operators.event_loop.freeze_heap`.
    freeze_heap: bool = True
    #: Create the topics the operator owns (output, feedback, dead letters, model state,
    #: demonstrations) where they are missing; when off, a missing one stops the start.
    create_topics: bool = True
    #: Wait at start for an input topic that does not exist (saying so every few seconds),
    #: rather than stop.
    wait_for_input: bool = False
    #: Seconds between two one-line summaries of the operator's work in the log (0: none).
    summary_interval_s: float = 60.0
    #: Seconds after which the operator's consumer refreshes its cluster metadata, so that an
    #: input topic made (or grown) after start is assigned within them. Faust's default is five
    #: minutes; a metadata request is a few hundred bytes.
    metadata_refresh_s: float = 5.0


#: The options when nothing is configured.
DEFAULTS = OperatorOptions()
