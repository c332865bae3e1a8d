"""One stable fingerprint of a JSON-like value, for ids and change checks."""

from __future__ import annotations

import hashlib
import json


def json_digest(value) -> str:
    """sha256 (hex) of `value` as JSON with sorted keys; values JSON has no form for are
    written as their str(). The same value gives the same digest in every process."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
