
-- Created convostore_read again (its window statements in two shapes); the function registry
-- installs it since.
