"""The pure core of streamcascade: stages, deferral policies, the learner, the cascade, LLM clients.

Nothing in this package imports Faust, Kafka, Prometheus, the settings or anything of
:mod:`streamcascade.operators` or the command line (``tests/unit/test_layers.py`` holds it to
that), so the same objects run in the in-process replay and in the Kafka operator; only the
driver differs, and it sees a model through :class:`~streamcascade.models.protocol.StreamModel`.
"""
