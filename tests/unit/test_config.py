"""Settings: env names, defaults from the conventional variables, secrets never printed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from stream_vae.config import RedisSettings, Settings


def test_nested_env_and_secret_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    """STREAM_VAE_* nested variables are read and secrets stay out of str()."""
    monkeypatch.setenv("STREAM_VAE_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAM_VAE_REDIS__URL", "redis://user:pw123@h:6379/0")
    monkeypatch.setenv("STREAM_VAE_WORKER__HTTP_PORT", "9999")
    s = Settings()
    assert s.worker.http_port == 9999
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "hunter2"
    text = str(s) + repr(s)
    assert "hunter2" not in text and "pw123" not in text
    assert s.redis.redacted_url() == "redis://user:***@h:6379/0"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:1/0?password=s3cr3t", "redis://127.0.0.1:1/0?password=***"),
        ("redis://:ab/s3cr3t@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://:p#s3cr3t@h:6379", "redis://:***@h:6379"),
        ("redis://app:s3cr?3t@h:6379/0", "redis://app:***@h:6379/0"),
        # a query value holding '@' cannot be told from a password holding '?': over-masked, never leaked
        ("redis://h:6379/0?client_name=a@b", "redis://h:***@b"),
    ],
)
def test_redis_passwords_are_masked_in_every_form_redis_reads(url: str, shown: str) -> None:
    """A password as a URL parameter, or holding '/' or '#', was logged in full; redis-py's own parse
    error even quoted part of it."""
    from stream_vae.exceptions import StateStoreError
    from stream_vae.state import redis_client

    settings = RedisSettings(url=url)
    assert settings.redacted_url() == shown and "s3cr3t" not in str(Settings(redis=settings))
    if "s3cr3t" in url:
        with pytest.raises(StateStoreError) as err:
            redis_client(RedisSettings(url=url.replace("h:", "127.0.0.1:").replace(":6379", ":1")))
        assert "s3cr3t" not in str(err.value)


def test_conventional_variables_are_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_BOOTSTRAP_SERVERS and REDIS_URL are honoured when the STREAM_VAE_ ones are unset."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k:1")
    monkeypatch.setenv("REDIS_URL", "redis://r:2/0")
    s = Settings()
    assert s.kafka.bootstrap_servers == "k:1" and s.redis.url == "redis://r:2/0"


def test_bootstrap_servers_with_spaces_after_commas(monkeypatch: pytest.MonkeyPatch) -> None:
    """'a:9092, b:9092' named a host ' b' (faust split on the comma only); an empty list is refused."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", " a:9092, b:9092 ,")
    assert Settings().kafka.bootstrap_servers == "a:9092,b:9092"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", " , ")
    with pytest.raises(ValidationError, match="empty"):
        Settings()


def test_bad_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid enumerated option is a validation error."""
    monkeypatch.setenv("STREAM_VAE_KAFKA__SECURITY_PROTOCOL", "TLS")
    with pytest.raises(ValidationError):
        Settings()


def test_log_redacts_secret_keys() -> None:
    """A secret bound to a log event is masked by the logging processor."""
    from stream_vae.logging import _redact

    with capture_logs() as logs:
        import structlog

        structlog.get_logger().info("connect", sasl_password="hunter2")
    assert logs and logs[0]["event"] == "connect"
    assert _redact(None, "info", {"sasl_password": "x", "redis_password": "y", "ok": 1}) == {
        "sasl_password": "***", "redis_password": "***", "ok": 1,
    }


@pytest.mark.parametrize("proto", ["SSL", "SASL_SSL"])
def test_tls_protocols_get_an_ssl_context(proto: str) -> None:
    """SSL and SASL_SSL client settings carry an SSL context (aiokafka requires one)."""
    import ssl

    from stream_vae.config import KafkaSettings

    kw = KafkaSettings(security_protocol=proto, sasl_mechanism="PLAIN" if proto == "SASL_SSL" else None,
                       sasl_username="u").client_kwargs()  # type: ignore[arg-type]
    assert isinstance(kw["ssl_context"], ssl.SSLContext)
    assert "ssl_context" not in KafkaSettings().client_kwargs()


def test_a_missing_ca_file_is_named_with_its_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TLS context failed with a bare '[Errno 2] No such file or directory', naming neither."""
    from stream_vae.exceptions import ConfigError

    monkeypatch.setenv("STREAM_VAE_KAFKA__SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("STREAM_VAE_KAFKA__SSL_CAFILE", "/nonexistent/ca.pem")
    s = Settings()  # (read anywhere: a chart's rendered settings name a file mounted only in the pod)
    with pytest.raises(ConfigError, match=r"SSL_CAFILE: CA file '/nonexistent/ca\.pem' not found"):
        s.kafka.client_kwargs()


def test_a_closed_pipe_ends_a_verb_quietly(tmp_path: object) -> None:
    """`stream-vae alerts ... | head -1` ended in 'error: [Errno 32] Broken pipe', exit 2."""
    import subprocess
    import sys

    script = ("from stream_vae.clierrors import friendly\n"
              "import typer\n"
              "app = typer.Typer()\n"
              "@app.command()\n"
              "@friendly\n"
              "def verb() -> None:\n"
              "    for i in range(200_000):\n"
              "        typer.echo(f'line {i}')\n"
              "app()\n")
    out = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -c \"$0\" | head -1", script],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "line 0\n", "")


def test_log_level_in_capitals_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_VAE_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("STREAM_VAE_LOG_FORMAT", "Console")
    s = Settings()
    assert (s.log_level, s.log_format) == ("debug", "console")
