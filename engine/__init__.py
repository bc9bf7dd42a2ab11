"""transformer-tui's engine: data, tokenizer, batches, model, training, decoding.

It computes and emits events (engine.events); it never prints or draws.
"""
