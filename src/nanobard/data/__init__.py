"""The text: corpora and their train/validation split, the character tokenizer, the token cache,
and the prompts and probe texts taken from a corpus."""
