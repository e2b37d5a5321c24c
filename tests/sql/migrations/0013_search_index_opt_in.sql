
-- Full-text search is opt-in: the generated column and its GIN index made every append pay
-- for indexing what it wrote, whether or not the store ever searched. Search now reads an
-- expression that `convostore search-index create` indexes (_sql.SEARCH_INDEX_CREATE).
DROP INDEX IF EXISTS "s".idx_messages_search;
ALTER TABLE "s".conversation_messages DROP COLUMN IF EXISTS search;
