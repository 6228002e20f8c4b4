"""streamcascade: answer every event of a Kafka topic with an online-learned cascade of models.

Cheap incremental River models first, transformer encoders exported to ONNX next, an LLM last; a
deferral policy after each stage learns, by imitation of the LLM and of ground-truth feedback,
when a cheaper stage's answer is good enough.
"""

from streamcascade.attach import attach
from streamcascade.errors import (
    ConfigurationError,
    KafkaLauncherError,
    LLMError,
    ModelFileError,
    ModelStateError,
    StreamcascadeError,
    UnknownLabelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "KafkaLauncherError",
    "LLMError",
    "ModelFileError",
    "ModelStateError",
    "StreamcascadeError",
    "UnknownLabelError",
    "__version__",
    "attach",
]
