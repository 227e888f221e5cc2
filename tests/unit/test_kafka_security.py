"""Every Kafka client tagloop builds gets the security settings (issue 9): no broker needed.

Each service's clients are built the way the service builds them (fake confluent
classes record their config; aiokafka and faust clients are constructed, never
started), then inspected for protocol, SASL mechanism, username, password and TLS files.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiokafka.helpers
import faust
import pytest
from pydantic import SecretStr

from services.feedback import batch
from services.feedback.app import FeedbackConfig, build_app
from services.learner import consumer as learner_consumer
from services.tagger import pipeline as tagger_pipeline
from shared.kafka import aiokafka_config, faust_credentials
from shared.settings import KafkaSettings, Settings

PASSWORD = "s3cret-Pa55-4217"
CN = "tagloop-test-ca"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A self-signed certificate (also the CA) and its key, as real files."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "1", "-subj", f"/CN={CN}"],
        check=True, capture_output=True,
    )
    return {"cafile": str(d / "cert.pem"), "certfile": str(d / "cert.pem"), "keyfile": str(d / "key.pem")}


@pytest.fixture
def made_contexts(monkeypatch: pytest.MonkeyPatch) -> dict[int, dict[str, Any]]:
    """Records the files each TLS context was built from (the real context is still built)."""
    made: dict[int, dict[str, Any]] = {}
    keep: list[ssl.SSLContext] = []  # ids stay unique while the contexts live
    real = aiokafka.helpers.create_ssl_context

    def spy(**kwargs: Any) -> ssl.SSLContext:
        ctx = real(**kwargs)
        keep.append(ctx)
        made[id(ctx)] = kwargs
        return ctx

    monkeypatch.setattr(aiokafka.helpers, "create_ssl_context", spy)
    return made


def kafka_settings(protocol: str, mechanism: str | None, tls: dict[str, str]) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="k1:9093,k2:9093", security_protocol=protocol, sasl_mechanism=mechanism,
        sasl_username="svc-tagloop", sasl_password=SecretStr(PASSWORD),
        ssl_cafile=tls["cafile"], ssl_certfile=tls["certfile"], ssl_keyfile=tls["keyfile"],
    )


@pytest.fixture(params=[("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN")], ids=["scram512", "plain"])
def settings(request: pytest.FixtureRequest, tls_files: dict[str, str], tmp_path: Path) -> Settings:
    protocol, mechanism = request.param
    return Settings(kafka=kafka_settings(protocol, mechanism, tls_files), state_dir=tmp_path / "state")


def assert_confluent(conf: dict[str, Any], s: Settings) -> None:
    k = s.kafka
    assert conf["bootstrap.servers"] == k.bootstrap_servers
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == k.sasl_mechanism
    assert (conf["sasl.username"], conf["sasl.password"]) == ("svc-tagloop", PASSWORD)
    assert conf["ssl.ca.location"] == k.ssl_cafile
    assert (conf["ssl.certificate.location"], conf["ssl.key.location"]) == (k.ssl_certfile, k.ssl_keyfile)


def assert_aiokafka_client(client: Any, s: Settings, made: dict[int, dict[str, Any]]) -> None:
    """The security an aiokafka consumer/producer will connect with (its ``AIOKafkaClient``)."""
    k = s.kafka
    assert client._security_protocol == "SASL_SSL"
    assert client._sasl_mechanism == k.sasl_mechanism
    assert (client._sasl_plain_username, client._sasl_plain_password) == ("svc-tagloop", PASSWORD)
    ctx = client._ssl_context
    assert made[id(ctx)] == {"cafile": k.ssl_cafile, "certfile": k.ssl_certfile, "keyfile": k.ssl_keyfile}
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert any(("commonName", CN) in rdn for c in ctx.get_ca_certs() for rdn in c["subject"])  # CA file loaded
    assert client._client_id == "tagloop-feedback"


class FakeConfluent:
    """Stands in for a confluent-kafka Consumer/Producer: records the config it was built with."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def init_transactions(self, timeout: float) -> None: ...

    def list_topics(self, topic: str, timeout: float) -> Any:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def assign(self, partitions: list[Any]) -> None: ...


def test_tagger_consumer_and_producer_get_security(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tagger_pipeline, "Consumer", FakeConfluent)
    monkeypatch.setattr(tagger_pipeline, "Producer", FakeConfluent)
    pipeline = tagger_pipeline.TaggerPipeline(settings, backend=None)  # type: ignore[arg-type]
    consumer, producer = pipeline._build_clients()
    assert_confluent(consumer.conf, settings)  # type: ignore[attr-defined]
    assert_confluent(producer.conf, settings)  # type: ignore[attr-defined]


def test_learner_consumer_gets_security(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(learner_consumer, "Consumer", FakeConfluent)
    source = learner_consumer.FeedbackSource(settings, "learner-test", {})
    assert_confluent(source.consumer.conf, settings)  # type: ignore[attr-defined]


def test_feedback_batch_consumer_gets_security(settings: Settings, made_contexts: dict[int, dict[str, Any]]) -> None:
    async def build() -> None:
        consumer = batch.build_consumer(settings, FeedbackConfig(group="g-test"))  # never started
        try:
            assert_aiokafka_client(consumer._client, settings, made_contexts)
            assert consumer._client._bootstrap_servers == settings.kafka.bootstrap_servers
        finally:
            await consumer.stop()

    asyncio.run(build())


def test_faust_app_clients_get_security(settings: Settings, made_contexts: dict[int, dict[str, Any]]) -> None:
    app = build_app(settings, FeedbackConfig(group="g-test"))
    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.mechanism.value, creds.protocol.value) == (settings.kafka.sasl_mechanism, "SASL_SSL")
    assert (creds.username, creds.password) == ("svc-tagloop", PASSWORD)
    assert PASSWORD not in repr(creds)

    async def build() -> None:
        # The very aiokafka clients faust's driver would start (faust/transport/drivers/aiokafka.py).
        producer = app.producer._new_producer()  # type: ignore[attr-defined]
        consumer = app.consumer._thread._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            assert_aiokafka_client(producer.client, settings, made_contexts)
            assert_aiokafka_client(consumer._client, settings, made_contexts)
            assert consumer._client._bootstrap_servers == ["k1:9093", "k2:9093"]
        finally:
            await producer.stop()
            await consumer.stop()

    asyncio.run(build())
    app.consumer._thread.thread_loop.close()  # type: ignore[attr-defined]  # the never-started thread's own loop


def test_other_protocols(tls_files: dict[str, str], made_contexts: dict[int, dict[str, Any]]) -> None:
    plain = KafkaSettings()
    assert aiokafka_config(plain) == {"bootstrap_servers": "127.0.0.1:9092", "client_id": "tagloop",
                                      "security_protocol": "PLAINTEXT"}
    assert faust_credentials(plain) is None

    sasl_plaintext = aiokafka_config(kafka_settings("SASL_PLAINTEXT", "SCRAM-SHA-256", tls_files))
    assert sasl_plaintext["sasl_mechanism"] == "SCRAM-SHA-256" and "ssl_context" not in sasl_plaintext

    mtls = kafka_settings("SSL", None, tls_files)
    assert "sasl_plain_password" not in aiokafka_config(mtls)
    creds = faust_credentials(mtls)
    assert isinstance(creds, faust.SSLCredentials)
    assert made_contexts[id(creds.context)]["keyfile"] == tls_files["keyfile"]

    with pytest.raises(ValueError, match="sasl_mechanism"):
        aiokafka_config(kafka_settings("SASL_SSL", None, tls_files))


def test_password_never_in_settings_text(settings: Settings) -> None:
    for text in (repr(settings), str(settings), repr(settings.kafka), settings.model_dump_json()):
        assert PASSWORD not in text
