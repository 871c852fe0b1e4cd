"""Learning: training STEP heads and probes on cached features, and the PEFT baselines through
the backbone. Built on every other wing of the core."""
