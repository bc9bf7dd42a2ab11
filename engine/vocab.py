"""Special tokens: the first four ids of every vocabulary (tokenizer, batches, decoding)."""

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]  # ids 0, 1, 2, 3
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
