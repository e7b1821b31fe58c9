"""The model layer: importing and loading causal-LM checkpoints, batched sampling, reward-weighted fine-tuning."""
