# Channel choice, retry policy and per-channel circuit breakers (node/channels.c): pure
# code with an injected clock and a caller-owned PRNG, unit-tested without a loop.
list(APPEND CORE_SOURCES node/channels.c)
llmrelay_unit_test(test_channels node/tests/test_channels.c node/channels.c node/wipe.c)
