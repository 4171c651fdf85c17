"""Training library: objective, state/optimizer, sharded step, checkpoints, data, metrics (issue 7)."""
