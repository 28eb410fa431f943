# Request translation (node/xlate_req.c) between OpenAI chat, Anthropic messages and Gemini
# generateContent bodies: pure code, no I/O; unit-tested on every format pair, the refusals and
# malformed bodies.
list(APPEND CORE_SOURCES node/xlate_req.c)
llmrelay_unit_test(test_xlate_req node/tests/test_xlate_req.c node/xlate_req.c node/jtree.c node/wipe.c)
