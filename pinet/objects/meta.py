"""Small helpers for API object metadata."""

from __future__ import annotations

import time
import uuid

from google.protobuf.timestamp_pb2 import Timestamp


def now() -> Timestamp:
    timestamp = Timestamp()
    stamp(timestamp)
    return timestamp


def stamp(timestamp: Timestamp) -> None:
    """Set timestamp to now in place (no temporary message to copy)."""
    nanos = time.time_ns()
    timestamp.seconds, timestamp.nanos = divmod(nanos, 1_000_000_000)


def new_uid() -> str:
    return str(uuid.uuid4())
