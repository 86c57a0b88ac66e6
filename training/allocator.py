"""Keep a training process's resident memory near what it actually holds (glibc only).

numpy's arrays come from the C library's ``malloc``. glibc serves a request above its
mmap threshold with a mapping of its own, returned to the system on ``free``, but it
raises that threshold to the size of each such block freed (up to 32 MiB): after the
first large temporaries, every array of a few MiB comes from its heaps instead, one heap
per thread that allocates (up to eight per core), and the pages freed in the middle of a
heap stay resident. Training makes and frees such arrays for every part of every fold,
in two threads, so the process kept gigabytes it no longer used: at 1,000 connectors
the live frames were under 1 GiB between the two fits while the process held 3.9 GiB.

:func:`limit_retention` fixes the thresholds (large arrays mapped and unmapped, as
before the first one was freed) and limits the heaps to one per core;
:func:`release` hands the free pages inside the heaps back between steps. Elsewhere
(musl, macOS) both do nothing.

polars' own buffers come from its jemalloc, which ``import polars`` tells to return free
pages half a second after they were freed, from one heap (arena) per thread that
allocates, up to eight per core: fitting then faulted the same memory in again and again
(half of a 300-connector training run's page faults; a fifth of a run's CPU time was
the kernel's).
:func:`tune_polars` makes polars' jemalloc keep freed pages longer, in one arena; it
only works before polars is imported (jemalloc reads its settings once), so the
``syncguard`` commands that fit call it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

__all__ = ["POLARS_MALLOC_CONF", "limit_retention", "release", "tune_polars"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 20
"""Bytes from which a block gets a mapping of its own (unmapped when freed)."""
TRIM_THRESHOLD = 16 << 20
"""Free bytes at the top of the main heap beyond which glibc returns them."""

POLARS_MALLOC_CONF = "narenas:1,dirty_decay_ms:1500"
"""polars' jemalloc settings for a fit, after polars' own (``dirty_decay_ms:500,
muzzy_decay_ms:1000``, set by ``import polars``): one arena (a thread reuses what another
freed) and freed pages kept 1.5 s instead of 0.5 s before they go back. At 1,000
connectors a training run's page faults went from 31-39 to 20 million and its CPU time
from 515-527 s to 480 s, at the same peak (3.64 GiB). Kept 3 s: 466-477 s, but peaks of
3.67-3.90 GiB; 30 s: 446 s and 4.21 GiB."""

_JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # polars' jemalloc is built with the _rjem_ prefix


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version exists in glibc only: musl has mallopt as a stub.
    needed = ("gnu_get_libc_version", "mallopt", "malloc_trim")
    return libc if all(hasattr(libc, f) for f in needed) else None


def limit_retention(n_arenas: int | None = None) -> bool:
    """Fix glibc's mmap and trim thresholds and cap its heaps (``n_arenas``, default the
    CPU count) for the rest of the process. Returns whether the allocator is glibc's."""
    libc = _glibc()
    if libc is None:
        return False
    libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    libc.mallopt(_M_ARENA_MAX, max(1, n_arenas or os.cpu_count() or 1))
    return True


def release() -> None:
    """Return the free pages of every glibc heap to the system (``malloc_trim(0)``)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def tune_polars(conf: str = POLARS_MALLOC_CONF) -> bool:
    """Give polars' jemalloc ``conf`` (see :data:`POLARS_MALLOC_CONF`) through its
    environment variable, for this process and the processes it starts.

    Returns whether it will apply: not once polars is imported (its allocator has read
    its settings), nor over a setting of the variable made outside (the caller's own).
    """
    if "polars" in sys.modules or os.environ.get(_JEMALLOC_ENV):
        return False
    os.environ[_JEMALLOC_ENV] = conf
    return True
