"""Celery entry points only: each task takes ids, loads rows, calls one service in models_app.services."""
