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


def _fresh(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (polars not imported yet) and return its stdout."""
    import os

    environ = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"} | env
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
    )
    return out.stdout.strip()


def test_tune_polars_only_before_polars_and_never_over_the_callers_setting():
    code = """
        import os
        from training import allocator
        first = allocator.tune_polars()
        import polars
        conf = os.environ.get("_RJEM_MALLOC_CONF")
        print(first, conf.split(",")[-2:] == allocator.POLARS_MALLOC_CONF.split(","),
              allocator.tune_polars())
    """
    # polars puts its own defaults first: settings given later win.
    assert _fresh(code) == "True True False"
    assert _fresh(code, _RJEM_MALLOC_CONF="narenas:4") == "False False False"
    late = "import polars, os\nfrom training import allocator\nprint(allocator.tune_polars())"
    assert _fresh(late) == "False"


def test_fitting_commands_tune_polars_before_importing_it():
    code = """
        import os, sys
        import click
        from detector.cli.main import cli
        ctx = click.Context(cli)
        before = "polars" in sys.modules
        cli.get_command(ctx, "{name}")
        conf = os.environ.get("_RJEM_MALLOC_CONF")
        print(before, "polars" in sys.modules, conf.endswith("{ours}"))
    """
    ours = allocator.POLARS_MALLOC_CONF
    assert _fresh(code.format(name="train", ours=ours)) == "False True True"
    assert _fresh(code.format(name="score", ours=ours)) == "False True False"
