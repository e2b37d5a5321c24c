
-- Created convostore_append_sharded and convostore_hold_shards; the function registry installs
-- them since.
