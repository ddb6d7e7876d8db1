"""`manage.py ls`: the same command as `models` (the name `pull`, `rm` and `search` users reach for)."""

from models_app.management.commands.models import Command

__all__ = ["Command"]
