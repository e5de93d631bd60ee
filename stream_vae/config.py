"""Runtime settings: one frozen pydantic-settings tree, read from ``STREAM_VAE_*`` variables.

Nested fields use ``__``: ``STREAM_VAE_KAFKA__BOOTSTRAP_SERVERS``, ``STREAM_VAE_REDIS__PASSWORD``.
The conventional ``KAFKA_BOOTSTRAP_SERVERS`` and ``REDIS_URL`` are honoured as defaults so the
tools work next to an existing Kafka/Redis without extra configuration. Secrets are ``SecretStr``
and never appear in ``str(settings)`` or in logs.
"""

from __future__ import annotations

import os
import re
import ssl
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogFormat = Literal["json", "console"]


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    """How to reach Kafka."""

    bootstrap_servers: str = Field(default_factory=lambda: _env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                                   validate_default=True)
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = Field(default=None, description="CA bundle for SSL/SASL_SSL (default: system CAs)")
    client_id: str = "stream-vae"
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    rebalance_timeout_ms: int = Field(default=10_000, ge=1000)
    replication_factor: int = Field(
        default=1, ge=1, description="replicas of the topics stream-vae creates (3 on a production cluster)"
    )
    trainer_group_id: str = Field(
        default="stream-vae-trainer", min_length=1,
        description="the trainers' consumer group: one per installation sharing a Kafka cluster",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        """``a:9092, b:9092`` (a space after the comma) is two hosts: faust took the second for ' b'."""
        hosts = [h.strip() for h in v.split(",") if h.strip()]
        if not hosts:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is empty: give host:port[,host:port...]")
        return ",".join(hosts)

    @model_validator(mode="after")
    def _sasl_needs_a_sasl_protocol(self) -> KafkaSettings:
        # aiokafka ignores a mechanism under PLAINTEXT/SSL while faust would speak SASL: the two clients
        # of one worker would disagree, so say it here
        sasl = self.security_protocol.startswith("SASL_")
        if self.sasl_mechanism and not sasl:
            raise ValueError(
                f"sasl_mechanism {self.sasl_mechanism} needs security_protocol SASL_SSL or SASL_PLAINTEXT, "
                f"not {self.security_protocol}"
            )
        if sasl and not self.sasl_mechanism:
            raise ValueError(f"security_protocol {self.security_protocol} needs a sasl_mechanism")
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of SSL and SASL_SSL (None for the others), made where a client needs it: a missing
        CA file gave a bare "[Errno 2] No such file or directory", naming neither the file nor the setting."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        if self.ssl_cafile is not None and not os.path.isfile(self.ssl_cafile):
            from stream_vae.exceptions import ConfigError

            raise ConfigError(f"STREAM_VAE_KAFKA__SSL_CAFILE: CA file {self.ssl_cafile!r} not found (or not a file)")
        return ssl.create_default_context(cafile=self.ssl_cafile)

    def client_kwargs(self) -> dict[str, object]:
        """Keyword arguments shared by every aiokafka client (secrets unwrapped only here)."""
        kw: dict[str, object] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        return kw


class RedisSettings(_Frozen):
    """How to reach Redis. Put the password in ``STREAM_VAE_REDIS__PASSWORD``, not in the URL."""

    url: str = Field(default_factory=lambda: _env("REDIS_URL", "redis://127.0.0.1:6379/0"))
    password: SecretStr | None = None
    prefix: str = "stream-vae"

    def redacted_url(self) -> str:
        """The URL with any password masked, safe to log: the user-info (up to the last ``@`` of the
        URL, so a password holding ``/``, ``#`` or ``?`` is masked whole; the user name is kept; a query
        value holding ``@`` is over-masked rather than a password leaked) and a ``password=`` query
        parameter, which redis-py also reads.

        >>> RedisSettings(url="redis://:a/b#c@h:1/0?password=x&db=2").redacted_url()
        'redis://:***@h:1/0?password=***&db=2'
        >>> RedisSettings(url="redis://app:s3cr?et@h:6379/0").redacted_url()
        'redis://app:***@h:6379/0'
        """
        scheme, sep, rest = self.url.partition("://")
        if not sep:
            return self.url
        at = rest.rfind("@")
        if at >= 0:
            user, colon, _ = rest[:at].partition(":")
            rest = (f"{user}:***" if colon else "***") + rest[at:]
        head, q, query = rest.partition("?")
        query = re.sub(r"(?i)(^|&)(password|pass|pwd)=[^&]*", r"\1\2=***", query)
        return f"{scheme}://{head}{q}{query}"


class WorkerSettings(_Frozen):
    """Scorer worker tuning."""

    http_host: str = "0.0.0.0"
    http_port: int = Field(default=8080, ge=0, le=65535)
    max_batch: int = Field(default=5000, ge=1)
    poll_timeout_ms: int = Field(default=200, ge=1)
    start_from: Literal["earliest", "latest"] = Field(
        default="earliest",
        description="where a consumer group with no committed offset starts: the oldest retained record "
                    "(nothing missed) or the next one written (a new stream on a busy topic: no backlog of alerts)",
    )
    torch_threads: int = Field(default=1, ge=1, le=64, description="torch intra-op threads per process")
    model_poll_s: float = Field(default=5.0, gt=0, description="how often to re-read the active model pointer")
    checkpoint_s: float = Field(default=10.0, gt=0, description="how often entity and drift state is saved to Redis")
    entity_ttl_s: float = Field(default=7 * 86400.0, ge=60,
                                description="saved state of an entity that stopped sending expires after this")


class Settings(BaseSettings):
    """All runtime settings of stream-vae.

    Examples
    --------
    >>> s = Settings(redis=RedisSettings(url="redis://u:pw@h:6379/0"))
    >>> "pw" in str(s)
    False
    """

    model_config = SettingsConfigDict(
        env_prefix="STREAM_VAE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    log_format: LogFormat = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:  # STREAM_VAE_LOG_LEVEL=DEBUG is the usual spelling
        return v.lower() if isinstance(v, str) else v
    topology_dir: str = Field(default="topologies", description="where `validate-topologies` looks by default")
    model_signing_key: SecretStr | None = Field(
        default=None, description="HMAC key: manifests are signed on register and verified before load"
    )
    model_keep_versions: int = Field(
        default=20, ge=2, description="model versions kept in Redis besides the active one and the rollback history"
    )

    def __str__(self) -> str:
        return (
            f"Settings(kafka={self.kafka.bootstrap_servers}, redis={self.redis.redacted_url()}, "
            f"log_format={self.log_format}, topology_dir={self.topology_dir})"
        )

    __repr__ = __str__
