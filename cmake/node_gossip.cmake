# SWIM membership on the node's loop (node/gossip.c): UDP socket, sealed datagrams
# (cluster/gossip_seal.c), swim ticks and events, push-pull over TCP framed by
# cluster/pushpull_seal.c (per-connection AES-256-GCM under the cluster key), discovery
# through etcd (members/<name> under a lease, proto/members.proto), the admin API's
# cluster view and the membership view.
# (In this fragment rather than a new one: editing an included fragment makes existing
# build trees re-run cmake, which also picks up proto/members.proto.)
list(APPEND CORE_SOURCES node/gossip.c cluster/pushpull_seal.c)
llmrelay_unit_test(test_pushpull_seal cluster/tests/test_pushpull_seal.c cluster/pushpull_seal.c)
llmrelay_unit_test(test_gossip_view node/tests/test_gossip_view.c node/gossip.c cluster/swim.c cluster/gossip_seal.c
                   cluster/replay.c cluster/ring.c cluster/pushpull_seal.c node/log.c node/util.c cluster/etcd.c
                   cluster/curl_uv.c)
