# node/config (flags + YAML config of the llmrelay daemon) and node/util (small shared helpers).
list(APPEND CORE_SOURCES node/config.c node/util.c)
llmrelay_unit_test(test_config node/tests/test_config.c node/config.c node/util.c)
llmrelay_unit_test(test_util node/tests/test_util.c node/util.c)
