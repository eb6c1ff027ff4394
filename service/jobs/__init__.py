"""Background jobs: predictions too large or slow to hold a connection open, run at a lower priority."""

import re

# The request line of a job's submission (routes.py): its body may reach MAX_JOB_BODY_BYTES, and the
# workers receive it whole like any other (service/web/workers.py). Here, so the master needs no Flask.
SUBMISSION_REQUEST_LINE = re.compile(rb"POST /v1/models/[^/?# ]+(?:/versions/[0-9]+)?/jobs(?:\?[^ ]*)? HTTP/1\.[01]")
