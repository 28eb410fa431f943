# Response translation (node/xlate_resp.c): whole answers, streams (event by event) and error bodies
# between OpenAI chat, Anthropic messages and Gemini, with usage normalisation; pure code, unit-tested.
list(APPEND CORE_SOURCES node/xlate_resp.c)
llmrelay_unit_test(test_xlate_resp node/tests/test_xlate_resp.c node/xlate_resp.c node/jtree.c node/wipe.c node/sse.c)
