"""stream-vae: a streaming anomaly and drift monitor for Kafka.

Records are scored by a Variational Autoencoder, thresholds are calibrated without labels, the
latent space is watched for drift, and new models are hot-swapped into running workers.
Nothing heavy (torch, faust) is imported here.
"""

from __future__ import annotations

from stream_vae.exceptions import (
    ConfigError,
    ModelLoadError,
    NotCalibratedError,
    SchemaError,
    StateStoreError,
    StreamVAEError,
    TopologyError,
)

__version__ = "0.1.0"
__all__ = [
    "ConfigError",
    "ModelLoadError",
    "NotCalibratedError",
    "SchemaError",
    "StateStoreError",
    "StreamVAEError",
    "TopologyError",
    "__version__",
]
