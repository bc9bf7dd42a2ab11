"""transformer-tui's engine: data, tokenizer, batches, model, training, decoding.

It computes and emits events (engine.events); it never prints or draws.
"""

import os

# How long an OpenMP thread spins for its next piece of work before it sleeps. Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE, our earlier default) cost a futex sleep and wake per parallel
# region: ~3,000 voluntary context switches a second in a Multi30k run (issue 26). Spinning
# forever (ACTIVE) steals the cores of a shared machine (measured before: 1150 -> 359 ms a
# batch with 2 threads under load when we stopped it). A short spin, ~20,000 turns (tens of
# microseconds), bridges the gap between a step's operators and still sleeps when the machine
# is busy: in 60 updates of a Multi30k run (2-core AMD EPYC, the malloc below) it removed 96% of
# the context switches (118K -> 4K) for 10% less wall time at the same CPU time. It must be set
# before torch loads its OpenMP runtime, so here, before any engine module imports torch; a
# user's own OpenMP setting wins.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "20000"

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

    By default glibc serves large blocks with mmap and unmaps them when freed; memory freed at
    the top of the heap goes back to the kernel. Each step then page-faults its activations in
    afresh: kernel time. Fixed here: no block is mapped on its own (M_MMAP_MAX = 0), so all
    come from the heap, and up to 1 GiB of freed heap is kept for the next step instead of
    returned. One arena: the engine thread allocates nearly everything, and a second arena's
    heaps (64 MB each) could not hold the logits of a large batch (4,096 target tokens x 8,000
    words x 4 bytes = 131 MB), which glibc then maps after all. Before this, blocks over 32 MB
    (glibc's largest mmap threshold) were still mapped: in a Multi30k run of a d_model 128
    model, where the logits are the largest tensors, 3.9 M page faults and 15% of the CPU time
    in the kernel for 60 updates; after, 0.3 M and 4% (1% with the OpenMP spin above), 15%
    more tokens a second (28% with the spin), peak RSS 1.07 -> 1.27 GB (issue 26;
    benchmarks/bench_cpu_time.py compares).
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
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 2**30)
    libc.mallopt(m_arena_max, 1)


_tune_malloc()
