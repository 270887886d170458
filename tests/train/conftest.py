"""Session fixtures: the synthetic train/test splits of the trainer tests."""

import pytest

from tests.train.helpers import synthetic


@pytest.fixture(scope="session")
def train_data():
    return synthetic(True, 128)


@pytest.fixture(scope="session")
def test_data():
    return synthetic(False, 64)
