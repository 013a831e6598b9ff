"""Dispatch entry of the reference backend (the ops are registered by :mod:`wae_fast.reference`)."""
from __future__ import annotations

from typing import Optional

from . import reference  # noqa: F401  (registers the ops)

OPS = ("mmd", "reparam")


def availability(device_type: str) -> Optional[str]:
    return None
