"""The from-scratch GPT (one bottom-up file, gpt.py), its checkpoints, generation, int8 weights,
bits-per-character scoring, and export to Hugging Face / GGUF."""
