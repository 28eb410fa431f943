# Peer RPC (node/peer.c): h2o server on --peer-listen and libcurl client on the main loop,
# PeerEnvelope batches sealed by cluster/peer_frame.c. The cluster quota routing that uses
# it lives in node/metering.c.
list(APPEND CORE_SOURCES node/peer.c)
