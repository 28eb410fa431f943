# Binaries and the core library; module fragments (cmake/*.cmake) have filled CORE_SOURCES.
add_library(llmrelay_core STATIC ${CORE_SOURCES})
target_link_libraries(llmrelay_core PUBLIC ${LLMRELAY_DEPS})

if(EXISTS ${CMAKE_SOURCE_DIR}/node/main.c)
  add_executable(llmrelay node/main.c ${LLMRELAY_EXE_SOURCES})
  target_link_libraries(llmrelay PRIVATE llmrelay_core)
endif()

# End-to-end tests: each chaos-tests/test_*.py is one ctest test, run with Debian's python3
# against the binaries of this build. Files that name "sanitize" in a `# ctest-labels:` line
# also run against the sanitizer build when LLMRELAY_ASAN_BUILD is given.

file(GLOB E2E_TESTS ${CMAKE_SOURCE_DIR}/chaos-tests/test_*.py)
foreach(t ${E2E_TESTS})
  get_filename_component(n ${t} NAME_WE)
  add_test(NAME e2e.${n} COMMAND /usr/bin/python3 -m pytest -q -x -rs -p no:cacheprovider ${t}
           WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/chaos-tests)
  set_tests_properties(e2e.${n} PROPERTIES LABELS "e2e" TIMEOUT 600
                       ENVIRONMENT "LLMRELAY_BIN=${CMAKE_BINARY_DIR}")
  file(STRINGS ${t} labels REGEX "^# ctest-labels:.*sanitize")
  if(labels AND LLMRELAY_ASAN_BUILD)
    add_test(NAME asan.e2e.${n} COMMAND /usr/bin/python3 -m pytest -q -x -rs -p no:cacheprovider ${t}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR}/chaos-tests)
    set_tests_properties(asan.e2e.${n} PROPERTIES LABELS "e2e;asan" TIMEOUT 900
                         ENVIRONMENT "LLMRELAY_BIN=${LLMRELAY_ASAN_BUILD};LLMRELAY_SANITIZED=1")
  endif()
endforeach()
