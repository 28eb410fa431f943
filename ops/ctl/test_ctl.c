/*
 * test_ctl.c — unit tests of llmrelayctl's pure helpers: option parsing, JSON number
 * syntax, integer parsing, path-segment encoding, token files and tree output. The
 * commands themselves are tested end to end in chaos-tests/test_llmrelayctl.py.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ops/ctl/ctl.h"
#include "ops/ctl/http.h"
#include "ops/ctl/json.h"
#include "ops/ctl/opts.h"

static struct ctl test_context(void)
{
    struct ctl ctl = {.admin_url = CTL_DEFAULT_ADMIN, .out = stdout, .err = stderr};
    return ctl;
}

static void test_opts(void **state)
{
    (void)state;
    static const struct ctl_opt_spec specs[] = {{"name", 1, 0}, {"api-key", 1, 1}, {"flag", 0, 0}, {NULL, 0, 0}};
    char a0[] = "pos", a1[] = "--name", a2[] = "n1", a3[] = "--api-key=k1", a4[] = "--api-key", a5[] = "k2",
         a6[] = "--flag", a7[] = "--", a8[] = "--not-an-option";
    char *argv[] = {a0, a1, a2, a3, a4, a5, a6, a7, a8};
    struct ctl ctl = test_context();
    struct ctl_opts opts;
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 9, argv, &opts), 0);
    assert_int_equal(opts.npositional, 2);
    assert_string_equal(opts.positional[0], "pos");
    assert_string_equal(opts.positional[1], "--not-an-option");
    assert_string_equal(ctl_opts_get(&opts, "name"), "n1");
    assert_string_equal(ctl_opts_get(&opts, "api-key"), "k2");
    assert_string_equal(ctl_opts_get(&opts, "flag"), "");
    assert_null(ctl_opts_get(&opts, "other"));
    ctl_opts_wipe(&opts, "api-key");
    assert_int_equal(a5[0], '\0');
    assert_int_equal(a3[10], '\0'); /* the value after "--api-key=" */
    assert_string_equal(a3, "--api-key=");

    char b0[] = "--name", b1[] = "x", b2[] = "--name", b3[] = "y";
    char *dup[] = {b0, b1, b2, b3};
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 4, dup, &opts), -EINVAL);
    char c0[] = "--name";
    char *missing[] = {c0};
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 1, missing, &opts), -EINVAL);
    char d0[] = "--bogus";
    char *unknown[] = {d0};
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 1, unknown, &opts), -EINVAL);
    char e0[] = "--flag=1";
    char *flagval[] = {e0};
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 1, flagval, &opts), -EINVAL);
    char f0[] = "--help";
    char *help[] = {f0};
    assert_int_equal(ctl_opts_parse(&ctl, "t", specs, 1, help, &opts), 0);
    assert_true(opts.help);
}

static void test_numbers(void **state)
{
    (void)state;
    static const char *const good[] = {"0", "25", "25.5", "-1", "1e5", "1.5E-3", "0.0001"};
    static const char *const bad[] = {"", "-", "01", ".5", "5.", "1e", "1,5", "0x10", "inf", "nan", " 1", "1 "};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        assert_true(ctl_is_json_number(good[i]));
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(ctl_is_json_number(bad[i]));
    long long v;
    assert_true(ctl_parse_int("-42", &v));
    assert_int_equal(v, -42);
    assert_false(ctl_parse_int("4.2", &v));
    assert_false(ctl_parse_int("", &v));
    assert_false(ctl_parse_int("99999999999999999999", &v));
    assert_false(ctl_parse_int("+1", &v));
}

static void test_path_segment(void **state)
{
    (void)state;
    char path[32] = "/p/";
    assert_int_equal(ctl_path_append_segment(path, sizeof(path), "a b/c?é"), 0);
    assert_string_equal(path, "/p/a%20b%2Fc%3F%C3%A9");
    char small[8] = "/p/";
    assert_int_equal(ctl_path_append_segment(small, sizeof(small), "abcdef"), -ENAMETOOLONG);
}

static void test_token_file(void **state)
{
    (void)state;
    struct ctl ctl = test_context();
    char path[] = "/tmp/test_ctl_tokenXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "secret-token\n", 13), 13);
    close(fd);
    assert_int_equal(ctl_load_token(&ctl, path), 0);
    assert_string_equal(ctl.token, "secret-token");

    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "two words\n", 10), 10);
    close(fd);
    assert_int_equal(ctl_load_token(&ctl, path), -EINVAL);
    assert_string_equal(ctl.token, "secret-token"); /* unchanged on failure */

    fd = open(path, O_WRONLY | O_TRUNC);
    assert_int_equal(write(fd, "\n", 1), 1);
    close(fd);
    assert_int_equal(ctl_load_token(&ctl, path), -EINVAL);
    unlink(path);
    assert_int_equal(ctl_load_token(&ctl, path), -EINVAL);
    ctl_dispose(&ctl);
    assert_null(ctl.token);
}

static void test_text_and_print(void **state)
{
    (void)state;
    char errbuf[128];
    yajl_val v = yajl_tree_parse("{\"a\":[\"x\",1.50,null],\"m\":{\"k\":\"v\"},\"c\":\"bell\\u0007\",\"n\":null}",
                                 errbuf, sizeof(errbuf));
    assert_non_null(v);
    char *t = ctl_json_text(ctl_json_get(v, "a", NULL), "-");
    assert_string_equal(t, "x, 1.50, null");
    free(t);
    t = ctl_json_text(ctl_json_get(v, "m", NULL), "-");
    assert_string_equal(t, "k=v");
    free(t);
    t = ctl_json_text(ctl_json_get(v, "c", NULL), "-");
    assert_string_equal(t, "bell?");
    free(t);
    t = ctl_json_text(ctl_json_get(v, "n", NULL), "none");
    assert_string_equal(t, "none");
    free(t);
    t = ctl_json_text(ctl_json_get(v, "absent", "deeper", NULL), "none");
    assert_string_equal(t, "none");
    free(t);

    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    assert_int_equal(ctl_json_print(mem, v), 0);
    fclose(mem);
    yajl_val again = yajl_tree_parse(buf, errbuf, sizeof(errbuf));
    assert_non_null(again);
    t = ctl_json_text(ctl_json_get(again, "a", NULL), "-");
    assert_string_equal(t, "x, 1.50, null"); /* number text kept as sent */
    free(t);
    free(buf);
    ctl_json_free(again);
    ctl_json_free(v);
}

static void test_table(void **state)
{
    (void)state;
    const char *const headers[] = {"A", "BB"};
    char c0[] = "\xe2\x80\xa6"
                "abcd",
         c1[] = "x", c2[] = "long-cell", c3[] = "y";
    char *cells[] = {c0, c1, c2, c3};
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    ctl_print_table(mem, headers, 2, cells, 2);
    fclose(mem);
    assert_string_equal(buf, "A          BB\n"
                             "\xe2\x80\xa6"
                             "abcd      x\n"
                             "long-cell  y\n");
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_opts),       cmocka_unit_test(test_numbers),        cmocka_unit_test(test_path_segment),
        cmocka_unit_test(test_token_file), cmocka_unit_test(test_text_and_print), cmocka_unit_test(test_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
