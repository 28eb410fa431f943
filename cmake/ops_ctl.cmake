# llmrelayctl: the operator CLI of the admin API (docs/admin-api.md). Not part of
# CORE_SOURCES: the CLI links only its own sources (libcurl + yajl from LLMRELAY_DEPS).
add_executable(llmrelayctl
  ops/llmrelayctl.c
  ops/ctl/ctl.c
  ops/ctl/http.c
  ops/ctl/json.c
  ops/ctl/opts.c
  ops/ctl/provider.c
  ops/ctl/key.c
  ops/ctl/price.c
  ops/ctl/token.c
  ops/ctl/report.c
  ops/ctl/cluster.c)
target_link_libraries(llmrelayctl PRIVATE ${LLMRELAY_DEPS})

llmrelay_unit_test(test_ctl ops/ctl/test_ctl.c ops/ctl/ctl.c ops/ctl/http.c ops/ctl/json.c ops/ctl/opts.c)
