"""Celery tasks for the inference queue."""
