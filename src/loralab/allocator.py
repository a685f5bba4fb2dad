"""What the process's memory allocator keeps: given back to the system where the C library allows it."""


def release_freed_memory() -> None:
    """Give the memory Python and torch have freed back to the system (glibc's malloc_trim). On a CPU the
    allocator otherwise keeps what the longest batch or the weights' fp32 copies once took, and a sweep
    worker's or a server's resident size only grows. Changes no number. Elsewhere than glibc (macOS, musl) nothing."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
