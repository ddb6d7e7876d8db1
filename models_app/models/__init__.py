from models_app.models.chat import Conversation, Message, Usage
from models_app.models.credentials import ApiKey, HubCredential
from models_app.models.jobs import DownloadJob
from models_app.models.limits import UserLimits
from models_app.models.nodes import Node
from models_app.models.preferences import UserPreferences
from models_app.models.repository import Repository, Snapshot

__all__ = [
    "ApiKey",
    "Conversation",
    "DownloadJob",
    "HubCredential",
    "Message",
    "Node",
    "Repository",
    "Snapshot",
    "Usage",
    "UserLimits",
    "UserPreferences",
]
