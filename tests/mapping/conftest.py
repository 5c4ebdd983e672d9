"""The mappings × simulators contract fixtures (tests/contract.py), shared by the mapping tests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests import contract


@pytest.fixture(scope="session")
def npo_everyone() -> contract.Everyone:
    """Every NPÖ contract person, and one NPÖ does not know, mapped once (read, never changed)."""
    return asyncio.run(contract.map_everyone(contract.NPO, contract.PEOPLE["npo"], also=(contract.UNKNOWN,)))


@pytest.fixture
async def cosmic_client(aiohttp_client: Any) -> Any:
    """A client to the Cosmic simulator holding the Cosmic contract people."""
    return await aiohttp_client(contract.COSMIC.create_app(contract.PEOPLE["cosmic"]))
