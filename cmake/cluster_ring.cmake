# Key ownership (cluster/ring.c): rendezvous hashing of key ids over the alive members,
# SipHash-2-4 written from its specification; pure code, no dependencies.
list(APPEND CORE_SOURCES cluster/ring.c)
llmrelay_unit_test(test_ring cluster/tests/test_ring.c cluster/ring.c)
