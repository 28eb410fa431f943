# Peer RPC framing (cluster/peer_frame.c): HMAC-SHA256 under a key derived from the cluster
# key, time window and per-sender replay windows; pure code over OpenSSL. The envelope it
# carries is proto/peer.proto, compiled into llmrelay_proto like every proto/*.proto.
list(APPEND CORE_SOURCES cluster/peer_frame.c)
llmrelay_unit_test(test_peer_frame cluster/tests/test_peer_frame.c cluster/peer_frame.c cluster/replay.c)
