# Replay table (cluster/replay.c): bounded LRU table of senders with per-sender sliding replay
# windows over a 64-bit counter; pure code, no dependencies. Used by gossip_seal and peer_frame.
list(APPEND CORE_SOURCES cluster/replay.c)
llmrelay_unit_test(test_replay cluster/tests/test_replay.c cluster/replay.c)
