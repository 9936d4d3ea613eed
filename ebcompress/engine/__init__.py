"""The training engine: the train/evaluate loop with callbacks, optimiser and schedule,
precision, DDP, atomic checkpoints, the preemption stop, progress and metrics.jsonl.

It takes its own config types and never imports the recipe schema; the shell builds them.
"""
