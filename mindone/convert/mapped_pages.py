"""Give back the pages of a memory-mapped tensor once it has been copied.

The readers return NumPy views of memory-mapped files. Pages a process has touched count in its
resident set until the mapping goes away, which for a checkpoint is after the last tensor: loading
a 5.2 GB file into a model would show 10.4 GB resident (the model plus the whole file). The pages
are page cache and reclaimable, but they make the process look twice its size and can push other
work out. ``release_pages(array)`` drops this process's mapping of the array's pages
(``MADV_DONTNEED``; the file stays in the page cache and the view stays valid: touching it again
faults the pages back in from the file).
"""

from __future__ import annotations

import mmap

import numpy as np

_PAGE = mmap.PAGESIZE


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):  # np.frombuffer(mapping)
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def release_pages(array: object) -> int:
    """Drop the resident pages lying wholly inside ``array``'s bytes if it views a file mapping; bytes released.

    Does nothing (returns 0) for arrays that own their memory, non-contiguous views, or platforms
    without ``madvise``.
    """
    if not isinstance(array, np.ndarray) or not array.nbytes or not array.flags.c_contiguous:
        return 0
    mapping = _mapping_of(array)
    if mapping is None or not hasattr(mapping, "madvise") or mapping.closed:
        return 0
    origin = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    start = array.ctypes.data - origin
    first = -(-start // _PAGE) * _PAGE
    last = (start + array.nbytes) // _PAGE * _PAGE
    if last <= first:
        return 0
    mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
    return last - first
