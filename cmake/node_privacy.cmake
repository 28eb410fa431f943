# Privacy hardening: the wiping free (node/wipefree.c, linked into the executable only), no
# core dumps, h2o's recycled socket buffers and pool chunks wiped (node/privacy.c).
list(APPEND CORE_SOURCES node/privacy.c)
if(NOT LLMRELAY_NO_WIPE)
  set(LLMRELAY_EXE_SOURCES ${LLMRELAY_EXE_SOURCES} node/wipefree.c)
endif()
llmrelay_unit_test(test_privacy node/tests/test_privacy.c node/privacy.c node/wipefree.c)
