# Per-worker lock-free metrics and their Prometheus text rendering (GET /metrics).
list(APPEND CORE_SOURCES node/metrics.c)
llmrelay_unit_test(test_metrics node/tests/test_metrics.c node/metrics.c node/wipe.c node/util.c)
