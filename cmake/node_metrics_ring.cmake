# The 7-day ring of 5-minute metric roll-ups in etcd (node/metrics_ring.c): writer, sweep and
# the cluster-wide reads of /admin/v1/metrics and /admin/v1/usage. The unit test covers the
# pure part (slot arithmetic, keys, runs, merge, protobuf encode/decode and its size cap).
list(APPEND CORE_SOURCES node/metrics_ring.c)
llmrelay_unit_test(test_metrics_ring node/tests/test_metrics_ring.c node/metrics_ring.c node/metrics.c node/wipe.c
                   node/util.c node/log.c node/clock.c cluster/curl_uv.c cluster/etcd.c cluster/config_store.c)
