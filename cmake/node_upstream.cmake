# Upstream client: backend dispatch and proxy rules (upstream.c), the HTTP/1.1 backend for
# cleartext upstreams (upstream_h1.c: libuv TCP, its own keep-alive pools, picohttpparser as
# exported by libh2o). The curl backend (upstream_curl.c) has its own line.
list(APPEND CORE_SOURCES node/upstream.c node/upstream_h1.c)
llmrelay_unit_test(test_upstream node/tests/test_upstream.c node/upstream.c node/upstream_h1.c node/wipe.c node/util.c)
