"""The cluster, started once for every cluster test (`make cluster`'s, on its own ports above
13300 and its own state `<stack>/cluster`, beside the single-node stack the rest of the suite
uses; its HTTP fronts take two free ports here), and stopped after the last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack import cluster, identities
from devstack.settings import StackSettings, load_stack_settings
from tests.support import free_port


@pytest.fixture(scope="session")
def clustered() -> Iterator[StackSettings]:
    identities.ensure()  # before the settings, which take the accounts' passwords from it
    settings = load_stack_settings().replace(
        product_service_port=free_port(), order_service_port=free_port()
    )
    cluster.up(settings)
    try:
        yield settings
    finally:
        cluster.down(settings)
