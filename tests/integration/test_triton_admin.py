"""The production Triton admin client against the real tritonserver the fixtures start (explicit model control)."""

from __future__ import annotations

import pytest

from shared.devstack.triton import TritonEndpoints
from shared.triton_admin import TritonAdmin, TritonAdminError
from shared.triton_client import TritonTextClient
from tests.fixtures_triton import ENCODER_MODEL

pytestmark = pytest.mark.integration


@pytest.mark.slow  # 14 s: keeps the default suite under 15 minutes
def test_ready_stats_unload_and_load(triton_encoder: TritonEndpoints) -> None:
    with TritonAdmin(triton_encoder.http_url, timeout_s=240) as admin:
        assert admin.server_ready()
        assert admin.is_ready(ENCODER_MODEL) and admin.is_ready(ENCODER_MODEL, 1)
        assert not admin.is_ready(ENCODER_MODEL, 2) and not admin.is_ready("no_such_model")
        assert admin.ready_versions(ENCODER_MODEL) == [1]
        assert any(r["name"] == ENCODER_MODEL for r in admin.repository_index())

        before = admin.stats(ENCODER_MODEL)[1]
        client = TritonTextClient(triton_encoder.http_url, ENCODER_MODEL, timeout_s=60)
        try:
            client.infer(["red cotton shirt", "steel water bottle", "leather wallet"])
        finally:
            client.close()
        after = admin.stats(ENCODER_MODEL)[1]
        assert (after.model, after.version) == (ENCODER_MODEL, 1)
        assert after.success_count == before.success_count + 1
        assert after.inference_count == before.inference_count + 3
        assert after.fail_count == before.fail_count
        assert after.mean_request_ms > 0 and after.compute_ns > before.compute_ns
        assert after.last_inference_ms >= before.last_inference_ms and after.last_inference_ms > 0

        try:
            admin.unload(ENCODER_MODEL)
            assert not admin.is_ready(ENCODER_MODEL)
            assert admin.ready_versions(ENCODER_MODEL) == []
            with pytest.raises(TritonAdminError, match="statistics"):
                admin.stats(ENCODER_MODEL)  # Triton keeps no statistics of an unloaded model
        finally:
            admin.load(ENCODER_MODEL)  # the session's other tests need it back
        admin.wait_ready(ENCODER_MODEL, 1, timeout_s=120)
        assert admin.ready_versions(ENCODER_MODEL) == [1]
        assert admin.stats(ENCODER_MODEL)[1].success_count == 0  # counters restart with the load


def test_errors_carry_tritons_reason(triton_encoder: TritonEndpoints) -> None:
    with TritonAdmin(triton_encoder.http_url) as admin:
        with pytest.raises(TritonAdminError, match="no_such_model"):
            admin.load("no_such_model")
        with pytest.raises(TritonAdminError, match="not ready after"):
            admin.wait_ready("no_such_model", timeout_s=0.5)
    unreachable = TritonAdmin("127.0.0.1:1", timeout_s=2)
    try:
        assert not unreachable.server_ready() and not unreachable.is_ready(ENCODER_MODEL)
        with pytest.raises(TritonAdminError):
            unreachable.load(ENCODER_MODEL)
    finally:
        unreachable.close()
