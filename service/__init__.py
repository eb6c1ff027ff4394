"""A model server for TensorFlow models: Flask under Gunicorn, with a dynamic batching queue in each worker."""

__version__ = "0.1.0"

# The order of the layers, the lowest first: a module imports only from its own layer or lower ones,
# and no two parts import each other (tests/unit/test_layers.py). What a lower layer needs from a
# higher one goes in as an argument, a callback or a Protocol, never as an import. docs/architecture.md.
LAYERS = (
    ("service", "errors", "threads", "client_numbers", "version_policy", "descriptor_sets"),  # no service imports
    ("tfserving_messages", "v2_messages"),  # gRPC messages, from descriptor_sets
    ("settings",),
    ("catalog",),  # the models served, each with its settings
    ("backends",),  # a model file into a forward pass, and its footprint
    ("array_bytes",),
    ("batching",),
    ("telemetry",),  # metrics, logs, the refusal summary
    ("caching",),
    ("versions",),
    ("jobs",),
    ("pipeline",),  # the way every inference request goes, and what a worker serves with
    ("hosting",),  # models brought into a worker and let go of, as the configuration and the APIs say
    ("protocols",),  # decode and encode, each wire format
    ("web",),  # Gunicorn's workers and the layers in front of the app
    ("operations",),  # health, stats, metrics and the API document, as routes
    ("sizing",),  # the master: plan, placement, readiness, SIGHUP
    ("app",),  # the composition root
)
