# The translators' JSON (node/jtree.c): a strict parser into a tree in a wiped arena (bounded
# depth, strict UTF-8) and a JSON writer into a wipe_buf_t; pure code, unit-tested.
list(APPEND CORE_SOURCES node/jtree.c)
llmrelay_unit_test(test_jtree node/tests/test_jtree.c node/jtree.c node/wipe.c)
