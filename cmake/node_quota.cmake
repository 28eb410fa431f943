# Quota logic (node/quota.c): reserve-then-settle budgets, sliding-window rate limits and
# leased allotments as pure owner/lessee state machines; no I/O, unit-tested with a fake clock.
list(APPEND CORE_SOURCES node/quota.c)
llmrelay_unit_test(test_quota node/tests/test_quota.c node/quota.c)
