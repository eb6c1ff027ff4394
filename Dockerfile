# The service's image. Build it from the project's root:
#   docker build -t tf-model-server .                      # bakes in the demo model
#   docker build --build-arg MODEL_PATH=models/yours.keras -t tf-model-server .
#                                                          # bakes in your model, copied to models/ first
# or mount a model at run time and point MODEL_PATH at it:
#   docker run -p 8000:8000 -v /srv/models/resnet:/models/resnet:ro -e MODEL_PATH=/models/resnet tf-model-server
# CI runs these same steps outside Docker (scripts/dockerfile_steps.py) on every change.
FROM python:3.11-slim

ARG MODEL_PATH=models/digits.keras
# Bind every interface inside the container only; log JSON for the cluster's log collector.
# The metrics files and footprint cache go to /tmp, the one writable place (an emptyDir in deploy/k8s).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    METRICS_DIR=/tmp/model-server/metrics \
    FOOTPRINT_CACHE=/tmp/model-server/footprints.json \
    MODEL_PATH=${MODEL_PATH}

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY gunicorn.conf.py wsgi.py ./
COPY service/ service/
COPY scripts/build_demo_model.py scripts/
COPY models/ models/
RUN if [ ! -e "$MODEL_PATH" ]; then python scripts/build_demo_model.py; fi

USER 10001
EXPOSE 8000 8500
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
