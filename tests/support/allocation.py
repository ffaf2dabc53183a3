"""How glibc serves big allocations in this process (Dask's worker settings, core/dask.yaml)."""

from __future__ import annotations


def second_big_malloc_is_mapped(nbytes: int = 4 << 20) -> bool:
    """In this process: is a second ``nbytes`` allocation still given its own fresh mapping?

    glibc's adaptive rule maps the first big buffer and, once it is freed, raises the mmap
    threshold above it, so the second comes from the heap; with ``MALLOC_TRIM_THRESHOLD_`` set
    the rule is off and every one is mapped. ``mallinfo2().hblkhd`` is the bytes mapped so."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    mapped = False
    for _ in range(2):
        before = libc.mallinfo2().hblkhd
        pointer = libc.malloc(nbytes)
        mapped = libc.mallinfo2().hblkhd - before >= nbytes
        libc.free(pointer)
    return mapped
