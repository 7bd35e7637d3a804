"""Bytes the local Cosmos DB stand-in served, per database (``scripts/cosmosdb-server.js`` counts them).

"Read" is response bodies (items returned by point reads and queries, and whatever writes echo back);
"written" is request bodies (items created, upserted, replaced or patched, and query texts with their
parameters). Headers are not counted. Only the stand-in has this endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr


@dataclass
class Traffic:
    """What one database cost on the wire."""

    requests: int = 0
    written: int = 0
    read: int = 0

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.requests - other.requests, self.written - other.written, self.read - other.read)


def endpoint_of(connection_string: str | SecretStr | None) -> str:
    """The AccountEndpoint of a Cosmos DB connection string, without a trailing slash."""
    # Settings hold the connection string as a SecretStr (its key must not show in a repr).
    text = connection_string.get_secret_value() if isinstance(connection_string, SecretStr) else connection_string
    parts = dict(p.split("=", 1) for p in (text or "").split(";") if "=" in p)
    return parts["AccountEndpoint"].rstrip("/")


async def cosmos_traffic(connection_string: str | SecretStr | None, *, reset: bool = False) -> dict[str, Traffic]:
    """The stand-in's counters by database name (then zeroed, with reset)."""
    url = endpoint_of(connection_string) + "/_flowcraft/traffic" + ("?reset=1" if reset else "")
    async with aiohttp.ClientSession() as session, session.get(url, ssl=False) as response:
        response.raise_for_status()
        data: dict[str, Any] = await response.json()
    return {db: Traffic(int(v["requests"]), int(v["requestBytes"]), int(v["responseBytes"]))
            for db, v in data.items()}


async def database_traffic(connection_string: str | SecretStr | None, database: str) -> Traffic:
    """The counters of one database (zero when it had no traffic yet)."""
    return (await cosmos_traffic(connection_string)).get(database, Traffic())
