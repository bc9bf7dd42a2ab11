"""transformer-tui's engine: data, tokenizer, batches, model, training, decoding.

It computes and emits events (engine.events); it never prints or draws.
"""

import os

# OpenMP threads that spin while waiting steal the cores the other threads need on a small or
# shared machine (measured: 1150 -> 359 ms a training batch with 2 threads under load). It must
# be set before torch loads its OpenMP runtime, so here, before any engine module imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
