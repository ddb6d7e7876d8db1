from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Dashboard"

    def ready(self) -> None:
        # Connects the logout signal that closes a session's websockets.
        from dashboard.consumers import session  # noqa: F401
