"""Keep training's large temporaries on the heap instead of fresh ``mmap`` pages (glibc only).

A training step on the CPU allocates and frees the same large tensors (activations,
gradients of whole embedding tables, logits) every time. glibc's ``malloc`` serves blocks
above its mmap threshold with a fresh ``mmap`` and gives them back with ``munmap`` on free,
so every step page-faults those megabytes in again, and it trims the heap top back to the
system whenever more than the trim threshold is free. Raising both thresholds keeps the
memory in the process for the next step: the same effect as running with ``jemalloc`` or
``tcmalloc``, which the PyTorch CPU tuning guides recommend. On the 2-core benchmark machine
it shortened an ``mgr`` epoch by 5-10% (``bench/results/epoch-times.md``); results are
bit-identical.

The price is memory the process keeps after a peak instead of returning it at once (freed
blocks are reused, the peak itself does not grow). Set ``MGREC_MALLOC_TUNING=0`` to leave the
allocator alone. Elsewhere than glibc (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TOP_PAD", "TRIM_THRESHOLD", "tune_malloc"]

logger = logging.getLogger(__name__)

#: Blocks up to this size come from the heap (glibc's default moves between 128 KiB and 32 MiB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the heap top kept before trimming (glibc's default: twice the mmap threshold).
TRIM_THRESHOLD = 1 << 30
#: Extra memory requested with each heap growth.
TOP_PAD = 64 << 20

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once.

    Returns:
        Whether the allocator is tuned (False off glibc, when ``MGREC_MALLOC_TUNING=0``, or
        when ``mallopt`` refuses a value).
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("MGREC_MALLOC_TUNING", "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    if not ok:
        logger.debug("mallopt refused the training allocator settings")
    _done = ok
    return ok
