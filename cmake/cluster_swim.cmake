# SWIM membership (cluster/swim.c): probes, indirect probes, suspicion with incarnations,
# Lifeguard local health, piggybacked gossip, push-pull state; a pure state machine driven
# by events and a clock, tested over a fake in-process network.
list(APPEND CORE_SOURCES cluster/swim.c)
llmrelay_unit_test(test_swim cluster/tests/test_swim.c cluster/swim.c)
