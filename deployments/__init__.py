"""Prefect deployments with schedules: ``python -m deployments.serve`` or ``python -m deployments.deploy``."""
