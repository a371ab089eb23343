"""One async MQTT transport (aiomqtt) and an in-memory fake with the same interface.

Nothing outside this package imports paho or aiomqtt.
"""

from deepedge.transport._api import (
    ConnectHook,
    Received,
    Refused,
    Subscription,
    Transport,
    TransportError,
    Will,
)
from deepedge.transport._dispatch import Dispatcher
from deepedge.transport._droplog import DropLog
from deepedge.transport._fake import FakeBroker, FakeTransport
from deepedge.transport._matching import topic_matches, validate_filter
from deepedge.transport._mqtt import MqttTransport
from deepedge.transport._ratelimit import RateLimiter
from deepedge.transport._rpc import CommandFailed, Handler, Requester, error_reply, ok_reply, serve_commands

__all__ = [
    "CommandFailed",
    "ConnectHook",
    "Dispatcher",
    "DropLog",
    "FakeBroker",
    "FakeTransport",
    "Handler",
    "MqttTransport",
    "RateLimiter",
    "Received",
    "Refused",
    "Requester",
    "Subscription",
    "Transport",
    "TransportError",
    "Will",
    "error_reply",
    "ok_reply",
    "serve_commands",
    "topic_matches",
    "validate_filter",
]
