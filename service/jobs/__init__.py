"""Background jobs: predictions too large or slow to hold a connection open, run at a lower priority."""
