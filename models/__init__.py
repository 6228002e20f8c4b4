"""The pure core of streamcascade: stages, deferral policies, the learner, the cascade, LLM clients.

Nothing in this package imports Faust or Kafka; the same objects run in the in-process replay and
in the Kafka operator, only the driver differs.
"""
