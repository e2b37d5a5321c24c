"""Type aliases shared by the modules that talk to asyncpg."""

from __future__ import annotations

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy
"""A connection, pooled or not: what the SQL helpers accept."""
