
UPDATE "s".convostore_api_keys SET sign_outs = sign_outs + 1 WHERE id = $1 RETURNING sign_outs
