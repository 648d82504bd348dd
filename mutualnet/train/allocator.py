"""Keep freed memory in the process: glibc's malloc otherwise hands every large buffer back to
the system when it is freed and takes it again, page by page, on the next step.

A training step on CPU allocates and frees the same large activation and gradient buffers
every step. With glibc's defaults, buffers above the (adaptive) mmap threshold are mapped
and unmapped each time and the top of the heap is trimmed, so each step pays page faults and
zero-filling for memory it just gave back. MutualNet's sandwich makes more of these buffers
than a plain step (one set per configuration), so it pays more. Measured on a 2-core CPU
(ResNet-50 at 32 px, batch 64, the sandwich step of ``bench/train_step.py``, median of 9):
3.38 s per step with freed memory kept against 4.18 s with glibc's defaults.

The price is that the process keeps its peak heap instead of shrinking after it, which is what
allocators built for throughput (jemalloc, tcmalloc) do as well.
"""

from __future__ import annotations

import ctypes
import os
import sys

from ..errors import ConfigError

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_LIMIT = 1 << 30  # buffers below 1 GiB come from the heap and stay with it


def retain_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse (see the module docstring).

    Process-wide; the command line applies it for the commands that compute. Returns whether
    it applied: not on other C libraries or systems, not when the environment already sets any
    ``MALLOC_*`` option (the user's choice wins), and not with ``MUTUALNET_MALLOC=system``
    (``retain``, the default, is the only other value).
    """
    setting = os.environ.get("MUTUALNET_MALLOC", "retain")
    if setting not in ("retain", "system"):
        raise ConfigError(f"MUTUALNET_MALLOC must be 'retain' (the default) or 'system', "
                          f"got {setting!r}")
    if (setting == "system" or not sys.platform.startswith("linux")
            or any(k.startswith("MALLOC_") for k in os.environ)):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, _LIMIT), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, _LIMIT)))
