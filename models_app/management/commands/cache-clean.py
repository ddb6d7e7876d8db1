"""`manage.py cache-clean`: the same command as `cache_clean` (Django finds commands by file name)."""

from models_app.management.commands.cache_clean import Command

__all__ = ["Command"]
