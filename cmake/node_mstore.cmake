# The 7-day metadata store: hourly segment files under <data-dir>/meta/ (node/mstore.h).
list(APPEND CORE_SOURCES node/mstore.c)
llmrelay_unit_test(test_mstore node/tests/test_mstore.c node/mstore.c node/log.c node/util.c)
