# Gossip packet sealing (cluster/gossip_seal.c): AES-256-GCM under a per-incarnation key
# derived from the cluster key, with per-sender replay windows; pure code over OpenSSL.
list(APPEND CORE_SOURCES cluster/gossip_seal.c)
llmrelay_unit_test(test_gossip_seal cluster/tests/test_gossip_seal.c cluster/gossip_seal.c cluster/replay.c)
