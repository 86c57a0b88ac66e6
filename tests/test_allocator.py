"""training.allocator: freed arrays leave the process's resident memory (glibc)."""

import subprocess
import sys
import textwrap

import pytest

from training import allocator

pytestmark = pytest.mark.skipif(
    allocator._glibc() is None, reason="the allocator settings apply to glibc only"
)

# Frees a large block (glibc then serves blocks up to its size from its heaps), makes
# 2 MiB arrays, frees all but the last (the heap's top stays in use, so nothing is
# trimmed) and prints how much resident memory the freed ones still hold.
_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from training import allocator

    def rss():
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * 4096

    if sys.argv[1] == "limited":
        allocator.limit_retention(2)
    del_me = np.ones(8 << 20, dtype=np.uint8)
    del del_me
    start = rss()
    arrays = [np.ones(2 << 20, dtype=np.uint8) for _ in range(100)]
    last = arrays[-1]
    del arrays
    allocator.release() if sys.argv[1] == "limited" else None
    print((rss() - start) >> 20)
    """
)


def _held_mib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_freed_arrays_are_returned():
    assert allocator.limit_retention(2) is True  # this machine's libc is glibc
    # 200 MiB made, 198 MiB freed: glibc's defaults keep them; limited, they go.
    assert _held_mib("default") > 150
    assert _held_mib("limited") < 20


def test_release_is_harmless_repeated():
    allocator.release()
    allocator.release()
