"""Models brought into a worker and let go of while it serves: its config polled, the repository API."""
