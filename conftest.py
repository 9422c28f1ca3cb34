"""Repository-wide pytest set-up: `gpu` tests skip cleanly on a machine without CUDA."""

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA; this machine has none")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
