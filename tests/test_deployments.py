"""Deployments: every one loads its flow, and registers with a real Prefect API with its schedule."""

from __future__ import annotations

import asyncio

import pytest

from deployments.definitions import DEPLOYMENTS


@pytest.mark.flows
def test_deployments_register_with_schedules(prefect_api):
    from prefect.client.orchestration import get_client

    from deployments.serve import runner_deployments

    ids = [d.apply() for d in runner_deployments()]

    async def read():
        async with get_client() as client:
            return [await client.read_deployment(i) for i in ids]

    registered = {d.name: d for d in asyncio.run(read())}
    for spec in DEPLOYMENTS:
        deployment = registered[spec.name]
        crons = [s.schedule.cron for s in deployment.schedules]
        assert crons == ([spec.cron] if spec.cron else [])
        assert deployment.parameters == spec.parameters
