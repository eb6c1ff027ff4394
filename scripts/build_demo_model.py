"""Build the demo model (a CNN on scikit-learn's handwritten digits) or, with --heavy, the benchmark model.

Demo: trains on 60% of the 1,797 8x8 digit images that ship inside scikit-learn (no
download), prints the held-out accuracy (at least 95% or the script fails), and saves the
model and the held-out split. Clients send raw pixel intensities (0 to 16); the model
rescales them itself.

Heavy: six dense layers of 4096 units with random weights (fixed seed), like the "big
dummy model" of the self-checkout article: its batch-of-1 forward pass is slow enough
that batching matters.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HOLDOUT_FRACTION = 0.4
MIN_ACCURACY = 0.95
SEED = 0


def build_digits(model_path: Path, holdout_path: Path) -> float:
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(SEED)
    digits = load_digits()
    images = digits.images.astype("float32")[..., np.newaxis]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=HOLDOUT_FRACTION, stratify=digits.target, random_state=SEED
    )
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Rescaling(1 / 16),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, activation="softmax", name="probabilities"),
        ],
        name="digits",
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=40, batch_size=32, verbose=0)
    accuracy = float(np.mean(model.predict(x_test, verbose=0).argmax(axis=1) == y_test))
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    np.savez_compressed(holdout_path, images=x_test, labels=y_test)
    return accuracy


def build_heavy(model_path: Path, input_size: int = 512, width: int = 4096, depth: int = 6, seed: int = SEED) -> int:
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((input_size,), name="features")]
    layers += [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    layers.append(keras.layers.Dense(10, activation="softmax", name="scores"))
    model = keras.Sequential(layers, name="heavy")
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model.save(model_path)
    return model.count_params()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heavy", action="store_true", help="build the large benchmark model instead")
    parser.add_argument("--output", type=Path, help="model file (default models/digits.keras or models/heavy.keras)")
    parser.add_argument(
        "--width", type=int, default=4096, help="--heavy: units per hidden layer (wider is slower: a slowed variant)"
    )
    parser.add_argument(
        "--seed", type=int, default=SEED, help="--heavy: seed of the random weights (another seed: another version)"
    )
    args = parser.parse_args()
    if args.heavy:
        path = args.output or Path("models/heavy.keras")
        parameters = build_heavy(path, width=args.width, seed=args.seed)
        print(f"saved {path}: {parameters:,} parameters, random weights (seed {args.seed})")
        return 0
    path = args.output or Path("models/digits.keras")
    holdout = path.with_name(path.stem + "_holdout.npz")
    accuracy = build_digits(path, holdout)
    print(f"saved {path} and its held-out split {holdout}; held-out accuracy {accuracy:.4f}")
    if accuracy < MIN_ACCURACY:
        print(f"held-out accuracy is below {MIN_ACCURACY}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
