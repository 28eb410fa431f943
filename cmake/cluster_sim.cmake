# Deterministic SWIM simulation (cluster/sim.c): many swim_t over a fake network and clock.
# Test code only (not in CORE_SOURCES): test_swim_sim asserts the membership targets at
# N = 100; swim_sim prints the figures for ops/bench/swim-sim.
llmrelay_unit_test(test_swim_sim cluster/tests/test_swim_sim.c cluster/sim.c cluster/swim.c)
add_executable(swim_sim cluster/tests/swim_sim_main.c cluster/sim.c cluster/swim.c)
target_link_libraries(swim_sim PRIVATE m)
