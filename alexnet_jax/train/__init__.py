"""Training: the step, optimiser and schedules, the loop, checkpoints,
preemption, initialisation from a run, summaries.
"""
