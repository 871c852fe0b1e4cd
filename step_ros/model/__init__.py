"""The model: the frozen backbone, the STEP heads and their baselines, PEFT baselines, head
checkpoints and compute costs. Imports nothing else of step_ros."""
