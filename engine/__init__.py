"""transformer-tui's engine: data, tokenizer, batches, model, training, decoding.

It computes and emits events (engine.events); it never prints or draws.
"""

import os

# OpenMP threads that spin while waiting steal the cores the other threads need on a small or
# shared machine (measured: 1150 -> 359 ms a training batch with 2 threads under load). It must
# be set before torch loads its OpenMP runtime, so here, before any engine module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# oneDNN (bf16 matrix products on the CPU) caches a compiled kernel per shape, up to 1,024 of
# them; token-bucketed batches bring new shapes at nearly every step, so the cache only grew:
# 0.7 -> 4.7 GB resident in a Multi30k run of a 7.6M-parameter model (1.5-2.0 GB with 16).
# 16 kernels hold one step's shapes (the layers repeat them): measured in
# benchmarks/bench_cpu_time.py at max_tokens 2,048, peak 1.31 -> 1.06 GB for 2% more wall
# time (no cache: 0.93 GB, 9% more). oneDNN reads it when it first compiles a kernel: set
# here, before any step, it counts.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


def _tune_malloc() -> None:
    """glibc malloc, as training uses it: tensors of a few MB, of new sizes at every batch.

    By default glibc serves large blocks with mmap and unmaps them when freed, raising its
    threshold as it goes; memory freed at the top of the heap goes back to the kernel. Each
    step then page-faults its activations in afresh: kernel time (the issue's 26%). Fixed
    here: blocks under 32 MB (glibc's largest threshold) come from the heap, and up to 256 MB
    of freed heap is kept for the next step instead of returned; a few arenas, not 8 per core,
    so memory freed by one thread serves the others. Bigger blocks (logits of large
    vocabularies) are still mapped and returned. Measured in benchmarks/bench_cpu_time.py.
    ``TRANSFORMER_TUI_MALLOC=glibc`` keeps glibc's defaults (for that comparison).

    mallopt at runtime, because glibc reads its MALLOC_* variables when the process starts.
    """
    if os.environ.get("TRANSFORMER_TUI_MALLOC") == "glibc":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to tune
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    libc.mallopt(m_mmap_threshold, 32 * 2**20)
    libc.mallopt(m_trim_threshold, 256 * 2**20)
    libc.mallopt(m_arena_max, 4)


_tune_malloc()
