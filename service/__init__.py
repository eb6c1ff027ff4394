"""A model server for TensorFlow models: Flask under Gunicorn, with a dynamic batching queue in each worker."""

__version__ = "0.1.0"
