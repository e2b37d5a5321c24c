
-- Created convostore_read again (how a window's start is found); the function registry
-- installs it since.
