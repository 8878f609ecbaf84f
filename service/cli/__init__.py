"""The `mmjobs` command (entry point `service.cli:app`): main.py holds the app, the service commands (up, api,
worker, scheduler, keys, usage, ...) and registers the REST-client groups: batch.py (with the shared API client),
jobs.py (job, limits, webhooks), media.py (video) and schedules.py."""

from service.cli.main import app

__all__ = ["app"]
