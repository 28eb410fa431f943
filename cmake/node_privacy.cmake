# Privacy hardening: glibc tcache off + M_PERTURB (re-exec), no core dumps, h2o's recycled
# socket buffers and pool chunks wiped (node/privacy.c).
list(APPEND CORE_SOURCES node/privacy.c)
llmrelay_unit_test(test_privacy node/tests/test_privacy.c node/privacy.c)
