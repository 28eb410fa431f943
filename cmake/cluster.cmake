# Cluster I/O over etcd: curl multi on libuv, the async etcd client, the typed config store.
list(APPEND CORE_SOURCES cluster/curl_uv.c cluster/etcd.c cluster/config_store.c)

# Sealing of secrets at rest (AES-256-GCM). config_store.c needs it, and other modules'
# unit tests compile config_store.c from their own source lists; so secrets is a small
# library every target links (through LLMRELAY_DEPS, like llmrelay_proto) rather than a
# source every such list would have to name. This fragment sorts before the node_* ones.
add_library(llmrelay_secrets STATIC cluster/secrets.c)
target_link_libraries(llmrelay_secrets PUBLIC PkgConfig::SSL)
list(APPEND LLMRELAY_DEPS llmrelay_secrets)

# The etcd tests start a real etcd (/usr/bin/etcd) on loopback through the fixture.
llmrelay_unit_test(test_etcd cluster/tests/test_etcd.c cluster/tests/etcd_fixture.c cluster/curl_uv.c cluster/etcd.c)
llmrelay_unit_test(test_config_store cluster/tests/test_config_store.c cluster/tests/etcd_fixture.c
                   cluster/curl_uv.c cluster/etcd.c cluster/config_store.c)
llmrelay_unit_test(test_secrets cluster/tests/test_secrets.c)
