"""Training: optimizer, sharded train state, jitted steps, checkpoints, metrics, the loop."""
