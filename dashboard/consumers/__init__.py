"""Websocket consumers: authenticate, check permission, forward. No business logic here."""
