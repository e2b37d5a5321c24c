
-- Created convostore_append and convostore_read; the function registry installs them since.
