"""The use case: breast-cancer classification on the dataset scikit-learn ships (no download)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

DATASET_NAME = "sklearn.datasets.load_breast_cancer"
SPLIT_SEED = 20240601
TEST_SIZE = 0.25


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    class_names: list[str]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def load() -> Dataset:
    """Load and split deterministically (stratified, fixed seed)."""
    bunch = load_breast_cancer()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return Dataset(
        x_train,
        x_test,
        y_train,
        y_test,
        feature_names=[str(n) for n in bunch.feature_names],
        class_names=[str(n) for n in bunch.target_names],
    )


def fingerprint(data: Dataset) -> str:
    """sha256 over the exact training and hold-out arrays, so metadata pins the data too."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def sample_rows(n: int, seed: int = 0) -> np.ndarray:
    """Realistic request rows: hold-out rows, sampled with a seed (for clients and load tests)."""
    data = load()
    rng = np.random.default_rng(seed)
    return data.x_test[rng.integers(0, len(data.x_test), size=n)]
