"""MQTT topic-filter matching (``+`` one level, ``#`` the rest), used by the dispatcher and the
in-memory fake broker alike."""

from __future__ import annotations

__all__ = ["topic_matches", "validate_filter"]


def validate_filter(topic_filter: str) -> str:
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"bad topic filter {topic_filter!r}: '#' must be a whole last level")
        if "+" in level and level != "+":
            raise ValueError(f"bad topic filter {topic_filter!r}: '+' must be a whole level")
    return topic_filter


def topic_matches(topic_filter: str, topic: str) -> bool:
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
