"""Sizing, in the Gunicorn master: the machine, its GPUs, the model's footprint, the plan and the hook bodies."""
