"""Celery tasks for the downloads queue."""
