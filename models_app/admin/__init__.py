"""Admin registrations, one module per area. No secret is ever displayed or editable as text."""

from models_app.admin import chat, downloads, keys, limits, nodes  # noqa: F401
