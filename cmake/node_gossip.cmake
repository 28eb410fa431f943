# SWIM membership on the node's loop (node/gossip.c): UDP socket, sealed datagrams
# (cluster/gossip_seal.c), swim ticks and events, the admin API's cluster view.
list(APPEND CORE_SOURCES node/gossip.c)
