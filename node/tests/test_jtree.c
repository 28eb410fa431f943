/* Unit tests for node/jtree: the parser's limits (depth, strict UTF-8, trailing bytes, the arena's
 * bound) and the writer (escaping, separators, a parsed tree written back, errors truncating). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include "node/jtree.h"

static const jtree_parse_opts_t strict = {.max_depth = 8, .strict_utf8 = true};
static const jtree_parse_opts_t lax = {.max_depth = 8, .strict_utf8 = false};

static int parse(const char *text, const jtree_parse_opts_t *opts, size_t *at)
{
    jarena_t a = JARENA_INIT(0);
    jnode_t *root = NULL;
    int r = jtree_parse(&a, (const uint8_t *)text, strlen(text), opts, &root, at, NULL);
    if (r == 0)
        assert_non_null(root);
    jarena_free(&a);
    return r;
}

static void test_tree(void **state)
{
    (void)state;
    const char *text = "{\"a\":[1,true,null,\"x\\ny\"],\"b\":{\"c\":-2.5e3},\"a\":false}";
    jarena_t a = JARENA_INIT(0);
    jnode_t *root = NULL;
    size_t str_bytes = 0;
    assert_int_equal(jtree_parse(&a, (const uint8_t *)text, strlen(text), &strict, &root, NULL, &str_bytes), 0);
    assert_int_equal(root->type, J_OBJ);
    assert_int_equal(root->count, 3);
    assert_null(root->parent);
    const jnode_t *arr = root->first;
    assert_string_equal(arr->key, "a");
    assert_int_equal(arr->type, J_ARR);
    assert_int_equal(arr->count, 4);
    assert_ptr_equal(arr->parent, root);
    assert_int_equal(arr->first->type, J_NUM);
    assert_string_equal(arr->first->s, "1");
    assert_int_equal(arr->first->next->type, J_BOOL);
    assert_true(arr->first->next->b);
    assert_int_equal(arr->first->next->next->type, J_NULL);
    assert_null(arr->first->key); /* array elements have no names */
    const jnode_t *s = arr->last;
    assert_int_equal(s->type, J_STR);
    assert_int_equal(s->n, 3);
    assert_memory_equal(s->s, "x\ny", 4);
    assert_int_equal(str_bytes, 3); /* string values only, not keys */
    assert_string_equal(arr->next->first->s, "-2.5e3");
    assert_int_equal(root->last->type, J_BOOL);
    assert_false(root->last->b);
    jarena_free(&a);
    assert_null(a.head);
}

static void test_depth(void **state)
{
    (void)state;
    char deep[64];
    /* 8 containers: the limit */
    snprintf(deep, sizeof deep, "[[[[{\"k\":[[[1]]]}]]]]");
    assert_int_equal(parse(deep, &strict, NULL), 0);
    /* 9 */
    snprintf(deep, sizeof deep, "[[[[{\"k\":[[[[1]]]]}]]]]");
    assert_int_equal(parse(deep, &strict, NULL), -ELOOP);
    assert_int_equal(parse(deep, &lax, NULL), -ELOOP);
}

static void test_utf8(void **state)
{
    (void)state;
    size_t at = 0;
    assert_int_equal(parse("[\"caf\xc3\xa9 \xf0\x9f\x98\x80\"]", &strict, NULL), 0);
    assert_int_equal(parse("[\"ab\xc0\xaf\"]", &strict, &at), -EILSEQ); /* overlong '/' */
    assert_true(at > 0 && at <= 8);
    assert_int_equal(parse("[\"\xed\xa0\x80\"]", &strict, NULL), -EILSEQ);     /* a raw surrogate */
    assert_int_equal(parse("[\"\\udc00\"]", &strict, NULL), -EILSEQ);          /* a decoded lone surrogate */
    assert_int_equal(parse("{\"\xed\xa0\x80\":1}", &strict, NULL), -EILSEQ);   /* in a key */
    assert_int_equal(parse("[\"\xf4\x90\x80\x80\"]", &strict, NULL), -EILSEQ); /* past U+10FFFF */
    /* without strict_utf8 only yajl's own check applies */
    assert_int_equal(parse("[\"\xed\xa0\x80\"]", &lax, NULL), 0);
    assert_int_equal(parse("[\"\xff\"]", &lax, NULL), -EINVAL);

    assert_true(jtree_utf8_valid((const unsigned char *)"plain ascii, longer than eight", 30));
    assert_false(jtree_utf8_valid((const unsigned char *)"plain ascii \xe2\x82", 14)); /* cut short */
    assert_true(jtree_utf8_valid((const unsigned char *)"\xe2\x82\xac", 3));
}

static void test_invalid(void **state)
{
    (void)state;
    size_t at = 0;
    assert_int_equal(parse("{\"a\":1} x", &strict, &at), -EINVAL);  /* trailing garbage */
    assert_int_equal(at, 9);                                        /* yajl stops past the bad token */
    assert_int_equal(parse("{\"a\":1}{}", &strict, NULL), -EINVAL); /* a second value */
    assert_int_equal(parse("{\"a\":1} \n", &strict, NULL), 0);      /* whitespace is fine */
    assert_int_equal(parse("", &strict, NULL), -EINVAL);
    assert_int_equal(parse("{\"a\":", &strict, NULL), -EINVAL);
    assert_int_equal(parse("[1,]", &strict, NULL), -EINVAL);
    assert_int_equal(parse("42", &strict, NULL), 0); /* any value at the top */
}

static void test_arena_bound(void **state)
{
    (void)state;
    /* every element is a node: 4000 of them do not fit in 64 KiB */
    size_t n = 4000;
    char *text = malloc(2 * n + 2);
    assert_non_null(text);
    text[0] = '[';
    for (size_t i = 0; i < n; i++)
        memcpy(text + 1 + 2 * i, i + 1 < n ? "0," : "0]", 2);
    jarena_t a = JARENA_INIT(65536);
    jnode_t *root = NULL;
    assert_int_equal(jtree_parse(&a, (const uint8_t *)text, 2 * n + 1, &strict, &root, NULL, NULL), -E2BIG);
    assert_true(a.total <= 65536);
    jarena_free(&a);
    a.max = 0; /* unbounded */
    assert_int_equal(jtree_parse(&a, (const uint8_t *)text, 2 * n + 1, &strict, &root, NULL, NULL), 0);
    assert_int_equal(root->count, n);
    jarena_free(&a);
    free(text);

    /* a big allocation gets a block of its own; small ones continue in the current block */
    jarena_init(&a, 0);
    char *small = jarena_alloc(&a, 10);
    char *big = jarena_alloc(&a, 100000);
    char *next = jarena_alloc(&a, 10);
    assert_non_null(small);
    assert_non_null(big);
    assert_ptr_equal(next, small + 16);
    assert_int_equal(big[99999], 0);
    jarena_free(&a);
}

static void test_writer_escaping(void **state)
{
    (void)state;
    wipe_buf_t b = WIPE_BUF_INIT(1024);
    jw_t w;
    jw_begin(&w, &b);
    jw_str(&w, "q\"b\\n\nr\rt\tb\bf\f\x01\x1f\x7f \xc3\xa9/");
    assert_int_equal(jw_end(&w), 0);
    const char *want = "\"q\\\"b\\\\n\\nr\\rt\\tb\\bf\\f\\u0001\\u001f\x7f \xc3\xa9/\"";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    wipe_buf_free(&b);
}

static void test_writer_structure(void **state)
{
    (void)state;
    wipe_buf_t b = WIPE_BUF_INIT(1024);
    jw_t w;
    jw_begin(&w, &b);
    jw_open(&w, '{');
    jw_key(&w, "a");
    jw_int(&w, -12);
    jw_key(&w, "b");
    jw_open(&w, '[');
    jw_str(&w, "x");
    jw_value(&w, "true", 4);
    jw_open(&w, '{');
    jw_close(&w, '}');
    jw_close(&w, ']');
    jw_keyn(&w, "cd", 1);
    jw_sep(&w);
    jw_put(&w, "\"", 1);
    jw_str_body(&w, "p\"", 2);
    jw_put(&w, "\"", 1);
    jw_close(&w, '}');
    assert_int_equal(jw_end(&w), 0);
    const char *want = "{\"a\":-12,\"b\":[\"x\",true,{}],\"c\":\"p\\\"\"}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);

    /* at depth 0 the writer adds no separators: the caller writes the punctuation */
    wipe_buf_reset(&b);
    jw_begin(&w, &b);
    jw_raw(&w, "{\"n\":");
    jw_int(&w, 7);
    jw_raw(&w, ",\"s\":");
    jw_str(&w, "v");
    jw_raw(&w, "}");
    assert_int_equal(jw_end(&w), 0);
    assert_int_equal(b.len, 15);
    assert_memory_equal(b.data, "{\"n\":7,\"s\":\"v\"}", 15);
    wipe_buf_free(&b);
}

static void test_writer_node(void **state)
{
    (void)state;
    const char *text = " { \"a\" : [ 1 , 2.50 , \"\\u00e9\\/\" ] , \"b\" : { } , \"c\" : null , \"d\" : [ ] } ";
    jarena_t a = JARENA_INIT(0);
    jnode_t *root = NULL;
    assert_int_equal(jtree_parse(&a, (const uint8_t *)text, strlen(text), &strict, &root, NULL, NULL), 0);
    wipe_buf_t b = WIPE_BUF_INIT(1024);
    jw_t w;
    jw_begin(&w, &b);
    jw_node(&w, root);
    assert_int_equal(jw_end(&w), 0);
    const char *want = "{\"a\":[1,2.50,\"\xc3\xa9/\"],\"b\":{},\"c\":null,\"d\":[]}";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);

    wipe_buf_reset(&b);
    jw_begin(&w, &b);
    jw_node_as_string(&w, root->first);
    assert_int_equal(jw_end(&w), 0);
    want = "\"[1,2.50,\\\"\xc3\xa9/\\\"]\"";
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.data, want, b.len);
    wipe_buf_free(&b);
    jarena_free(&a);
}

static int errors_seen;

static void count_error(jw_t *w, int err)
{
    (void)w;
    assert_int_equal(err, -E2BIG);
    errors_seen++;
}

static void test_writer_error(void **state)
{
    (void)state;
    wipe_buf_t b = WIPE_BUF_INIT(16);
    assert_int_equal(wipe_buf_append(&b, "keep", 4), 0);
    jw_t w;
    jw_begin(&w, &b);
    w.error_cb = count_error;
    errors_seen = 0;
    jw_open(&w, '[');
    jw_str(&w, "0123456789");
    jw_str(&w, "more than fits");
    jw_int(&w, 1);
    jw_close(&w, ']');
    assert_int_equal(w.err, -E2BIG);
    assert_int_equal(errors_seen, 1); /* reported once */
    assert_int_equal(jw_end(&w), -E2BIG);
    assert_int_equal(b.len, 4); /* what was there before stays, the rest is gone */
    assert_memory_equal(b.data, "keep", 4);
    wipe_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tree),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_arena_bound),
        cmocka_unit_test(test_writer_escaping),
        cmocka_unit_test(test_writer_structure),
        cmocka_unit_test(test_writer_node),
        cmocka_unit_test(test_writer_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
