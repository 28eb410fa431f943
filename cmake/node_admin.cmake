# Admin API listener (node/admin.c): providers and keys over the config store.
list(APPEND CORE_SOURCES node/admin.c)
# Drives a real admin listener (on a loop thread, over a real etcd) with libcurl.
llmrelay_unit_test(test_admin node/tests/test_admin.c node/admin.c node/util.c node/log.c cluster/config_store.c
                   cluster/etcd.c cluster/curl_uv.c cluster/tests/etcd_fixture.c)
