"""Celery app and tasks: thin adapters over the service layer."""
