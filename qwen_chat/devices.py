"""Phones (or other devices) paired with this app over the local network, and the codes that pair them.

"Use on my phone" shows a QR code: a link on the computer's local address with a six-digit code
in it. The phone opens it (nothing to type), the code is checked once (single use, ten minutes,
five wrong tries end it), and the phone gets a token of its own, kept in a cookie, bound to the
browser whose page showed the code: it sees that browser's conversations. The token is stored
only as its SHA-256; revoking a device refuses its token at once. The network listener itself is
web.LanListener's: it serves only requests that carry a token of a device not revoked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

CODE_SECONDS = 600
MAX_TRIES = 5
SEEN_EVERY = 60.0  # seconds between two writes of a device's last_seen
COOKIE = "qwen_chat_device"


@dataclass(frozen=True)
class Device:
    id: int
    owner: str
    name: str
    created_at: float
    last_seen: float | None
    revoked_at: float | None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def device_name(user_agent: str) -> str:
    """A name a person recognises, from the phone browser's User-Agent."""
    ua = user_agent or ""
    for needle, name in (("iPhone", "iPhone"), ("iPad", "iPad"), ("Android", "Android phone"),
                         ("Windows", "Windows computer"), ("Macintosh", "Mac"), ("Linux", "Linux device")):
        if needle in ua:
            return name
    return "Device"


class Devices:
    """Paired devices (table `devices`, migration m010) and the pairing codes (in memory)."""

    def __init__(self, store) -> None:
        self.store = store
        self._codes: dict[str, list] = {}  # code -> [owner, expires, tries left]
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # token hash -> last write of last_seen

    def new_code(self, owner: str) -> str:
        """A fresh six-digit code for `owner` (replacing this owner's earlier ones)."""
        with self._lock:
            for code in [c for c, v in self._codes.items() if v[0] == owner or v[1] < time.time()]:
                del self._codes[code]
            code = f"{secrets.randbelow(10**6):06d}"
            while code in self._codes:
                code = f"{secrets.randbelow(10**6):06d}"
            self._codes[code] = [owner, time.time() + CODE_SECONDS, MAX_TRIES]
            return code

    def end_codes(self) -> None:
        with self._lock:
            self._codes.clear()

    def pair(self, code: str, user_agent: str) -> str | None:
        """A new device's token if `code` is a live code (it is then used up), else None. A
        wrong code counts against every live code's tries (no guessing through the list)."""
        now = time.time()
        with self._lock:
            found = next((c for c in self._codes if hmac.compare_digest(c, code or "")), None)
            if found is None or self._codes[found][1] < now:
                for c in list(self._codes):
                    self._codes[c][2] -= 1
                    if self._codes[c][2] <= 0 or self._codes[c][1] < now:
                        del self._codes[c]
                return None
            owner = self._codes.pop(found)[0]
        token = secrets.token_urlsafe(32)
        row = dict(owner=owner, name=device_name(user_agent), token_hash=_hash(token),
                   created_at=now, last_seen=now, revoked_at=None)
        self.store._write(lambda: self.store.db.table("devices").insert(row))
        return token

    def owner_of(self, token: str | None) -> str | None:
        """The owner a device's token stands for, None if unknown or revoked."""
        if not token:
            return None
        digest = _hash(token)
        with self.store._lock:
            rows = list(self.store.db.query(
                "SELECT id, owner FROM devices WHERE token_hash = ? AND revoked_at IS NULL", [digest]))
        if not rows:
            return None
        now = time.time()
        if now - self._seen.get(digest, 0.0) > SEEN_EVERY:
            self._seen[digest] = now
            device_id = rows[0]["id"]
            try:
                self.store._write(lambda: self._execute(
                    "UPDATE devices SET last_seen = ? WHERE id = ?", [now, device_id]), wait_s=0)
            except Exception:  # noqa: BLE001 - a busy or full disk: only "last seen" is late
                pass
        return rows[0]["owner"]

    def of(self, owner: str) -> list[Device]:
        with self.store._lock:
            rows = list(self.store.db.query(
                "SELECT id, owner, name, created_at, last_seen, revoked_at FROM devices "
                "WHERE owner = ? AND revoked_at IS NULL ORDER BY created_at", [owner]))
        return [Device(**r) for r in rows]

    def revoke(self, owner: str, device_id: int) -> None:
        now = time.time()
        self.store._write(lambda: self._execute(
            "UPDATE devices SET revoked_at = ? WHERE id = ? AND owner = ?", [now, device_id, owner]))

    def _execute(self, sql: str, params: list) -> None:
        with self.store.db.atomic():
            self.store.db.execute(sql, params)
