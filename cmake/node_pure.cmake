# Pure request/response processing of the relay (wipe, SSE, request JSON, usage): no I/O,
# unit-tested without a loop.
list(APPEND CORE_SOURCES node/wipe.c node/sse.c node/reqjson.c node/usage.c)
llmrelay_unit_test(test_sse node/tests/test_sse.c node/sse.c node/wipe.c)
llmrelay_unit_test(test_reqjson node/tests/test_reqjson.c node/reqjson.c node/jtree.c node/wipe.c node/util.c)
llmrelay_unit_test(test_usage node/tests/test_usage.c node/usage.c node/wipe.c)
