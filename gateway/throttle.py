"""Failed logins, throttled per (account, client address), never locking the owner out.

A password guesser is slowed down where it guesses from; the account's owner,
logging in from anywhere else, is not. :class:`LoginThrottle` keeps:

- per account: its recent failures, from any address. After ``max_failures``
  within ``window_s`` seconds the account is *guarded* for ``max_lockout_s``
  seconds after each further failure. A guarded account is still open to
  everyone: the server only makes sure that it checks each of its logins where it
  knows the client's address (see :mod:`gateway.auth`: pyarrow does not tell the
  Handshake who is calling);
- per (account, address): after ``max_failures`` failures within ``window_s``,
  that address waits ``lockout_s`` seconds before it may try that account again,
  twice as long after each further failure, at most ``max_lockout_s``. A correct
  password from that address during the wait is refused too (else the wait would
  not slow a guesser down); every other address is not affected, and a wait is
  never longer than ``max_lockout_s`` after the last failure.

Names are compared case-insensitively; unknown names are throttled exactly as
known ones, so the throttle does not tell which exist. At most ``max_entries``
accounts and as many (account, address) pairs are remembered, the least recently
failed forgotten first, so memory stays bounded whatever an attacker sends.

>>> now = [0.0]
>>> t = LoginThrottle(max_failures=2, lockout_s=10, clock=lambda: now[0])
>>> t.failure("bob", "10.0.0.1"); t.failure("bob", "10.0.0.1")
>>> t.wait_s("bob", "10.0.0.1"), t.wait_s("bob", "10.0.0.2"), t.guarded("bob")
(10.0, 0.0, True)
>>> now[0] = 10.0; t.allowed("bob", "10.0.0.1")
True
"""

from __future__ import annotations

import ipaddress
import threading
import time
import urllib.parse
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


def client_address(peer: str) -> str:
    """The address a client is throttled by, from gRPC's peer string.

    The IP without the port (a new connection has a new port); for IPv6, its
    /64 network (one host usually holds a whole /64); local sockets share one.

    >>> client_address("ipv4:192.0.2.7:51234")
    '192.0.2.7'
    >>> client_address("ipv6:[2001:db8:1:2:3:4:5:6]:443"), client_address("ipv6:%5B::1%5D:80")
    ('2001:db8:1:2::/64', '::/64')
    >>> client_address("ipv6:[::ffff:192.0.2.7]:80"), client_address("unix:/tmp/s")
    ('192.0.2.7', 'unix')
    """
    kind, _, rest = peer.partition(":")
    rest = urllib.parse.unquote(rest)
    if kind == "ipv4":
        return rest.rpartition(":")[0] or rest
    if kind == "ipv6":
        host = rest.rpartition("]")[0].lstrip("[") if rest.startswith("[") else rest
        try:
            address = ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return peer
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return kind or peer


@dataclass
class _Failures:
    times: deque[float]
    lockouts: int = 0
    until: float = field(default=float("-inf"))  # locked (a pair) or guarded (an account)


class LoginThrottle:
    """Counts failed logins per account and per (account, client address).

    ``address`` is :func:`client_address`'s, or None where the server does not
    know it (such a failure counts for the account only).
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 30.0,
        max_lockout_s: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_lockout_s = max_lockout_s
        self.max_entries = max_entries
        self._clock = clock
        self._accounts: OrderedDict[str, _Failures] = OrderedDict()
        self._pairs: OrderedDict[tuple[str, str], _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def guarded(self, name: str) -> bool:
        """Whether ``name`` has failed often lately: check its logins where the address is known."""
        with self._lock:
            entry = self._accounts.get(name.lower())
            return entry is not None and self._clock() < entry.until

    def wait_s(self, name: str, address: str) -> float:
        """Seconds before ``address`` may try ``name`` again (0: now)."""
        with self._lock:
            entry = self._pairs.get((name.lower(), address))
            return 0.0 if entry is None else max(0.0, entry.until - self._clock())

    def allowed(self, name: str, address: str) -> bool:
        """Whether a login of ``name`` from ``address`` may be checked now."""
        return self.wait_s(name, address) == 0.0

    def failure(self, name: str, address: str | None) -> None:
        """Record a failed login of ``name`` (from ``address``, if known)."""
        key = name.lower()
        now = self._clock()
        with self._lock:
            account = self._entry(self._accounts, key)
            if self._count(account, now) or now < account.until:
                account.until = now + self.max_lockout_s  # guarded while failures go on
            if address is None:
                return
            pair = self._entry(self._pairs, (key, address))
            if self._count(pair, now):
                pair.until = now + min(self.lockout_s * 2**pair.lockouts, self.max_lockout_s)
                pair.lockouts += 1

    def success(self, name: str, address: str | None) -> None:
        """Forget the failures of ``address`` for ``name`` (the account stays guarded)."""
        if address is None:
            return
        with self._lock:
            self._pairs.pop((name.lower(), address), None)

    def _entry(self, table: OrderedDict, key: object) -> _Failures:  # type: ignore[type-arg]
        entry: _Failures | None = table.get(key)
        if entry is None:
            entry = _Failures(deque(maxlen=self.max_failures))
            table[key] = entry
            while len(table) > self.max_entries:
                table.popitem(last=False)
        else:
            table.move_to_end(key)
        return entry

    def _count(self, entry: _Failures, now: float) -> bool:
        """Add a failure at ``now``; whether ``max_failures`` now fall within the window."""
        while entry.times and entry.times[0] <= now - self.window_s:
            entry.times.popleft()
        if not entry.times:
            entry.lockouts = 0
        entry.times.append(now)
        return len(entry.times) >= self.max_failures

    def __len__(self) -> int:
        """How many (account, address) pairs have failures on record."""
        return len(self._pairs)
