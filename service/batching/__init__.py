"""Batching: the queue and its threads, when to send a batch (policy), what a pass costs, who may wait (admission)."""
