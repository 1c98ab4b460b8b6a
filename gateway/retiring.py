"""Engines that can be retired while queries still read them.

A live policy change swaps in a new engine; the old one is *retired*: closed,
and its directory deleted, once the last query planning on it or streaming from
it has released it. :class:`Retiring` holds that count for every engine kind.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

log = logging.getLogger("stockade.engine")


class Retiring:
    """Use counting and retirement; subclasses give :attr:`closed`, :meth:`close` and a
    ``work_dir``, and call :meth:`_init_retiring` in their constructor."""

    work_dir: Path
    _lock: threading.Lock
    _users: int
    _retired: bool

    def _init_retiring(self) -> None:
        self._lock = threading.Lock()
        self._users = 0  # queries planning on or streaming from the engine
        self._retired = False

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _close_retired(self) -> None:
        self.close()
        shutil.rmtree(self.work_dir, ignore_errors=True)
        log.info("retired engine in %s closed", self.work_dir)

    def acquire(self) -> None:
        """Count one more user; every :meth:`acquire` is matched by one :meth:`release`."""
        with self._lock:
            if self.closed:
                raise RuntimeError("engine not started or already closed")
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            done = self._retired and self._users == 0
        if done:
            self._close_retired()

    @contextmanager
    def in_use(self) -> Iterator[Self]:
        """The engine, counted as in use for the ``with`` block."""
        self.acquire()
        try:
            yield self
        finally:
            self.release()

    def retire(self) -> None:
        """Close the engine and delete its directory once its last user is done.

        The caller makes sure no new query starts on it (the domain swaps in
        the new engine first); queries already streaming finish normally.
        """
        with self._lock:
            self._retired = True
            done = self._users == 0
        if done:
            self._close_retired()

    @property
    def retired(self) -> bool:
        return self._retired
