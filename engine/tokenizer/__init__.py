"""Tokenizers: ``recipes`` (how one is built and trained), ``stage`` (the pipeline's tokenizer
stage and a run directory's tokenizer files), ``supervisor`` (a training in a child process) and
``child`` (that child's main)."""
