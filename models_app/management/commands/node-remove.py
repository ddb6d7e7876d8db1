"""`manage.py node-remove`: the same command as `node_remove` (Django finds commands by file name)."""

from models_app.management.commands.node_remove import Command

__all__ = ["Command"]
