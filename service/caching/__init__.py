"""The result cache: answers of instances already computed, per worker and optionally shared in Redis."""
