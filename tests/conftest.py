from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch

from mmsparse.data import make_synthetic, write_release
from tests.helpers import TINY, TOY

# Small tensors: one thread is faster and does not fight over busy cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - keeps any legacy numpy RNG use deterministic


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, busy CPU more threads only wait for each other.

    For the modules whose tests time or compare training steps
    (``pytestmark = pytest.mark.usefixtures("one_thread")``): whatever an earlier test set.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_store():
    return make_synthetic(TINY)


@pytest.fixture
def tiny_release(tmp_path, tiny_store):
    """The tiny synthetic store written in the paper's release format, with its bundle."""
    root = tmp_path / "data"
    write_release(tiny_store, root, "synth")
    tiny_store.bundle.save(root / "bundle")
    return root


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy engine (:data:`tests.helpers.TOY`) as one more file of the engines package.

    A folder on the package's path holds it; the registry and its scan are restored after.
    """
    from mmsparse.index.engines import _base

    package = importlib.import_module("mmsparse.index.engines")
    folder = tmp_path / "more_engines"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY)
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    monkeypatch.setattr(_base, "_REGISTRY", dict(_base._REGISTRY))
    monkeypatch.setattr(_base, "_SCANNED", set(_base._SCANNED))
    yield "toy"
    sys.modules.pop("mmsparse.index.engines.toy", None)
