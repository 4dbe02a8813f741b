"""Pretrained Hugging Face models: opening them (hub, local folder, the embedded SmolLM2), and
fine-tuning with the Trainer plus nanobard's additions."""
