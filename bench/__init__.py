"""convostore's benchmark suite: convostore against its peers and the raw asyncpg floor."""
