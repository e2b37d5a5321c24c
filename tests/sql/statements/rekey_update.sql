
UPDATE "s".conversation_messages m
   SET content = u.content, tool_calls = NULL, raw = NULL, key_id = u.key_id, sealed = u.sealed
  FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bytea[])
       AS u(tenant_id, session_id, seq, old_key, content, key_id, sealed)
 WHERE m.session_id = u.session_id AND m.tenant_id = u.tenant_id AND m.seq = u.seq
   AND m.key_id IS NOT DISTINCT FROM u.old_key
