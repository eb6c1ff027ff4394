"""Build a SavedModel that its forward pass limits, and the answers to check a load test against.

The overload test needs a server whose bottleneck is the model, not HTTP: 200 chained
1024x1024 matrix products (about 20 ms alone and 80 ms for 32 instances on 2 cores) from
4 inputs to 2 outputs, fixed seed. Beside the model it writes `answers.json`: 16
instances and the predictions the model itself gives them, for `loadgen.py --expect`.

    python scripts/build_slow_model.py --out /tmp/slow
    MODEL_PATH=/tmp/slow/slow WORKERS=1 make serve
    python scripts/loadgen.py --url http://127.0.0.1:8000 --expect /tmp/slow/answers.json -c 97 -d 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

WIDTH, DEPTH, INPUTS, OUTPUTS = 1024, 200, 4, 2
ANSWERED_INSTANCES = 16
SEED = 0


def build(out: Path) -> tuple[Path, Path]:
    """Save the model as `out`/slow and its answers as `out`/answers.json; returns both paths."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    weights = [  # scaled so that tanh neither saturates nor vanishes through the chain
        rng.normal(size=(INPUTS, WIDTH)),
        rng.normal(size=(WIDTH, WIDTH)) / math.sqrt(WIDTH),
        rng.normal(size=(WIDTH, OUTPUTS)) / math.sqrt(WIDTH),
    ]

    class Slow(tf.Module):
        def __init__(self):
            self.w_in, self.w, self.w_out = (tf.constant(w.astype("float32")) for w in weights)

        @tf.function(input_signature=[tf.TensorSpec([None, INPUTS], tf.float32, name="x")])
        def serve(self, x):
            hidden = tf.tanh(x @ self.w_in)
            for _ in range(DEPTH):
                hidden = tf.tanh(hidden @ self.w)
            return {"y": hidden @ self.w_out}

    module = Slow()
    model_path, answers_path = out / "slow", out / "answers.json"
    tf.saved_model.save(module, str(model_path), signatures={"serving_default": module.serve})
    instances = rng.uniform(-1, 1, size=(ANSWERED_INSTANCES, INPUTS)).astype("float32")
    predictions = module.serve(tf.constant(instances))["y"].numpy()
    answers_path.write_text(json.dumps({"instances": instances.tolist(), "predictions": predictions.tolist()}))
    return model_path, answers_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write slow/ and answers.json into")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_path, answers_path = build(args.out)
    print(f"saved {model_path} and {answers_path}")


if __name__ == "__main__":
    main()
