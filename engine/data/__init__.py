"""Parallel corpora: ``corpus`` (the Corpus every source yields), the sources ``local``, ``wmt14``
and ``sample`` (the built-in generator), and ``stage`` (load_corpus and the data stage)."""
