"""The classic tutorial setup, as a baseline for scripts/bench.py: Flask, one sync worker, model.predict per request.

    MODEL_PATH=models/heavy.keras gunicorn -w 1 -k sync -b 127.0.0.1:8001 --chdir scripts baseline_server:app

Deliberately naive, as most first deployments are: no batching, `model.predict` on every
request, one request at a time. Do not use it to serve anything.
"""

import os

import keras
import numpy as np
from flask import Flask, jsonify, request

model = keras.models.load_model(os.environ["MODEL_PATH"])
app = Flask(__name__)


@app.post("/predict")
def predict():
    instances = np.array(request.get_json(force=True)["instances"], dtype="float32")
    return jsonify({"predictions": model.predict(instances, verbose=0).tolist()})


@app.get("/readyz")
def readyz():
    return {"status": "ready"}
