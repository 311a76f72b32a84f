"""dr-train: mid-training, SFT and RL for deep-research agents, with resumable Hugging Face checkpoints."""
