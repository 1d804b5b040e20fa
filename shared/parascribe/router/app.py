"""Wiring of the router function: GCS, Pub/Sub and the job store, built once per process."""

from __future__ import annotations

from parascribe.config import Settings
from parascribe.gcp.pubsub import PubSubPublisher
from parascribe.gcp.storage import GcsStore
from parascribe.jobs import JobStore
from parascribe.router.capacity import capacity_from_settings
from parascribe.router.service import Router

SERVICE = "router"


def build(settings: Settings) -> Router:
    """The router with real adapters; ``Router.handle_event`` takes each CloudEvent.

    The GPU backlog comes from the state bucket, refined by Cloud Monitoring off the emulators.
    """
    store = GcsStore.create(settings.gcp_project, settings.storage_emulator_host)
    jobs = JobStore(store, settings.state_bucket)
    return Router(settings, store, PubSubPublisher(settings.gcp_project), jobs, capacity_from_settings(settings, jobs))
