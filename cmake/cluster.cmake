# Cluster I/O over etcd: curl multi on libuv, the async etcd client, the typed config store.
list(APPEND CORE_SOURCES cluster/curl_uv.c cluster/etcd.c cluster/config_store.c)

# The etcd tests start a real etcd (/usr/bin/etcd) on loopback through the fixture.
llmrelay_unit_test(test_etcd cluster/tests/test_etcd.c cluster/tests/etcd_fixture.c cluster/curl_uv.c cluster/etcd.c)
llmrelay_unit_test(test_config_store cluster/tests/test_config_store.c cluster/tests/etcd_fixture.c
                   cluster/curl_uv.c cluster/etcd.c cluster/config_store.c)
