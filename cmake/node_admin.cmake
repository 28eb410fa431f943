# Admin API listener (node/admin.c): providers, keys, prices, tokens, logs, usage, audit.
list(APPEND CORE_SOURCES node/admin.c)
# Drives a real admin listener (on a loop thread, over a real etcd) with libcurl.
llmrelay_unit_test(test_admin node/tests/test_admin.c node/admin.c node/util.c node/log.c node/wipe.c cluster/config_store.c
                   cluster/etcd.c cluster/curl_uv.c cluster/tests/etcd_fixture.c)
