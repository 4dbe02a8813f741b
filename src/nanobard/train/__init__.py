"""Training the from-scratch GPT: the loop (loop.py), its step and time budget and LR schedule,
the optimizers (AdamW, Muon) and torchrun support. Knows nothing of analysis: it takes callbacks."""
