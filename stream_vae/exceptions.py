"""One exception root for stream-vae; each subclass says what went wrong and how to fix it."""

from __future__ import annotations

from redis import RedisError


class StreamVAEError(Exception):
    """Root of every error stream-vae raises on purpose."""


class ConfigError(StreamVAEError, ValueError):
    """Settings or command-line options are invalid."""


class TopologyError(StreamVAEError, ValueError):
    """A topology YAML file is invalid; the message names the file and the field."""


class SchemaError(StreamVAEError, ValueError):
    """A record does not match its topology's schema."""


class NotCalibratedError(StreamVAEError, RuntimeError):
    """A detector was asked to predict before `infer_threshold` gave it a threshold."""


class NotFittedError(StreamVAEError, RuntimeError):
    """A component was used before `fit`."""


class ModelLoadError(StreamVAEError, RuntimeError):
    """A model artifact is missing, corrupt (digest mismatch) or incompatible."""


class StateStoreError(StreamVAEError, RuntimeError):
    """Redis (or another state store) is unreachable or returned something unexpected."""


class BrokerError(StreamVAEError, RuntimeError):
    """The Kafka-protocol broker is unreachable or refused an operation."""


class RollbackConflictError(ModelLoadError):
    """A rollback of version X found another version active: someone moved the pointer first."""


# Redis did not answer: the caller waits and tries again (the registry reports Redis errors as StateStoreError)
REDIS_DOWN = (RedisError, StateStoreError)
