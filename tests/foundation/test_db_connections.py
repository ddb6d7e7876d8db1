"""Database connections outlive a request and a task (DATABASE_CONN_MAX_AGE): opening one per chat message cost
the web process and the inference worker a connect each on the way to the first token. Celery's Django fixup
closed every connection before and after each task; dashboard/celery.py keeps them as Django does between
requests, closing those past their age or failing their health check."""

from __future__ import annotations

import pytest
from django.db import connection

from dashboard.celery import _tidy_database_connections


@pytest.mark.django_db(transaction=True)
def test_a_task_keeps_its_connection_between_tasks() -> None:
    assert connection.settings_dict["CONN_MAX_AGE"] > 0
    connection.ensure_connection()
    opened = connection.connection
    _tidy_database_connections(sender=None)  # task_postrun, then the next task's task_prerun
    _tidy_database_connections(sender=None)
    assert connection.connection is opened


@pytest.mark.django_db(transaction=True)
def test_a_connection_past_its_age_is_closed_between_tasks() -> None:
    connection.ensure_connection()
    connection.close_at = 0  # as if DATABASE_CONN_MAX_AGE had passed
    _tidy_database_connections(sender=None)
    assert connection.connection is None
