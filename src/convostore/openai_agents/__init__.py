"""convostore for the OpenAI Agents SDK (``pip install 'convostore[agents]'``).

``PostgresSession`` satisfies ``agents.memory.Session``; ``SessionAgent`` is the seed's
wrapper, working; ``OfflineModel`` answers from history alone, for demos and tests.
"""

from ._agent import SessionAgent
from ._offline import OfflineModel
from ._session import PostgresSession

__all__ = ["OfflineModel", "PostgresSession", "SessionAgent"]
