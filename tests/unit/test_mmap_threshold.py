"""The daemon fixes glibc's mmap threshold (``roost.daemon.app.fix_mmap_threshold``).

A fixed threshold keeps every block of 128 KiB or more mapped, also after mapped blocks
of that size have been freed (glibc otherwise raises the threshold to their size, and
uvloop's 256 KiB read buffer of each TLS connection then comes from the heap; see
docs/performance.md, "IMAP idle memory over TLS, session 9"). Each check runs in a new
interpreter: the threshold is the process's.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="glibc 2.33 or later (mallopt, mallinfo2)",
)

# Allocates and frees a 1 MiB block twice; prints whether each was mapped (glibc's
# mallinfo2: hblks counts the mapped blocks in use), then whether the heap's free top
# (keepcost) was given back. 1 MiB rather than uvloop's 256 KiB:
# a free heap chunk that large (from the imports) would serve the block whatever the
# threshold, and none is that large.
_PROBE = """
import ctypes, sys
from roost.daemon.app import fix_mmap_threshold
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 << 20))  # as the daemon's start does: both thresholds rise
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
mapped = []
for _ in range(2):
    before = libc.mallinfo2().hblks
    block = libc.malloc(1024 * 1024)
    mapped.append(libc.mallinfo2().hblks > before)
    libc.free(block)
# the heap's free top after 800 KiB of blocks below the mmap threshold there were freed:
# trimmed above the trim threshold, which the first freed block raised to 8 MiB without
# the fix
blocks = [libc.malloc(100 * 1024) for _ in range(8)]
for block in reversed(blocks):
    libc.free(block)
mapped.append(libc.mallinfo2().keepcost < 512 * 1024)
print(" ".join(str(m) for m in mapped))
"""


def _probe(mode: str) -> str:
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* or GLIBC_TUNABLES from the caller
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    return done.stdout.strip()


def test_a_freed_big_block_leaves_the_next_one_mapped_and_the_heap_top_trimmed() -> None:
    assert _probe("fixed") == "True True True"


def test_glibc_left_alone_puts_the_blocks_on_the_heap_and_keeps_its_top() -> None:
    # what the fixed thresholds prevent: the first free raised both
    assert _probe("default") == "False False False"


def test_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.daemon.app import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=65536")
    assert fix_mmap_threshold() is False
