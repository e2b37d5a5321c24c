
SELECT m.seq, m.branch FROM "s".conversation_messages m
WHERE m.session_id = $2 AND m.tenant_id = $1 AND m.seq > $5 AND m.seq <= $6
  AND m.seq <= ($4::bigint[])[array_position($3::text[], m.branch::text)]
ORDER BY m.seq DESC LIMIT 1
