# The request path: server, relay, snapshot, errors, log.
list(APPEND CORE_SOURCES node/server.c node/relay.c node/upstream_curl.c node/snapshot.c node/errors.c node/log.c node/clock.c node/records.c node/metering.c)
llmrelay_unit_test(test_snapshot node/tests/test_snapshot.c node/snapshot.c)
# Debian's libh2o-dev lacks the khash.h that <h2o/http2_internal.h> includes (see the file).
set_source_files_properties(node/server.c PROPERTIES INCLUDE_DIRECTORIES ${CMAKE_SOURCE_DIR}/node/compat)
llmrelay_unit_test(test_log node/tests/test_log.c node/log.c node/util.c)
llmrelay_unit_test(test_clock node/tests/test_clock.c node/clock.c)
llmrelay_unit_test(test_errors node/tests/test_errors.c node/errors.c)
