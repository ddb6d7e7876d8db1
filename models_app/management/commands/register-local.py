"""`manage.py register-local`: the same command as `register_local`."""

from models_app.management.commands.register_local import Command

__all__ = ["Command"]
