"""The Faust side of streamcascade: the cascade operator, the learner, state, dead letters, metrics.

Read in this order to follow one event: :mod:`codec` (bytes to an event and back),
:mod:`operator` (the logic that answers a batch of events and joins feedback, free of Faust),
:mod:`decision_log` (how feedback finds the event it labels), :mod:`fleet_learner`
(demonstrations to a new model state), :mod:`state_store` (signed state on a compacted topic),
:mod:`dead_letters`, :mod:`metrics`.

Then how it runs in a Faust app: :mod:`runtime` (the parts, and the agents and timers that drive
them), :mod:`topics` (the one description of the operator's topics), :mod:`options` (every
default), :mod:`startup` (the checks before the first record), :mod:`batching` (micro-batches),
:mod:`writer` and :mod:`acks` (writing, then acking in offset order), :mod:`faust_io`,
:mod:`faust_patches` and :mod:`event_loop` (Faust, aiokafka and the event loop, as the operator
needs them).
"""
