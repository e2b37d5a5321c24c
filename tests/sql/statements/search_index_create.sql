
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_messages_search ON "s".conversation_messages
    USING gin (to_tsvector('english', left(content, 100000))) WHERE sealed IS NULL
