
-- Created convostore_append again (its path for one request); the function registry installs
-- it since.
