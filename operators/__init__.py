"""The Faust side of streamcascade: the cascade operator, the learner, state, dead letters, metrics.

Read in this order to follow one event: :mod:`codec` (bytes to an event and back),
:mod:`operator` (the micro-batched agent that answers events), :mod:`decision_log` (how feedback
finds the event it labels), :mod:`learner_agent` (demonstrations to a new model state),
:mod:`state_store` (signed state on a compacted topic), :mod:`dead_letters`, :mod:`metrics`.
"""
