# The mock provider (OpenAI, Anthropic and Gemini formats) (build/mockprovider): the upstream of the end-to-end, chaos
# and benchmark tests. Not part of CORE_SOURCES; its end-to-end test is
# chaos-tests/test_mockprovider.py.
add_executable(mockprovider ops/mockprovider.c)
target_link_libraries(mockprovider PRIVATE ${LLMRELAY_DEPS})
