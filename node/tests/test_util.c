/* test_util.c — unit tests of node/util: address parsing, hashing, base64, request ids,
 * RFC 3339, constant-time compare and small-file reading. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/util.h"

static void test_hostport_ipv4(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(util_parse_hostport("127.0.0.1:8443", &ss, &len), 0);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    assert_int_equal(sin->sin_family, AF_INET);
    assert_int_equal(ntohs(sin->sin_port), 8443);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(len, sizeof(struct sockaddr_in));

    assert_int_equal(util_parse_hostport("0.0.0.0:0", &ss, &len), 0);
    assert_int_equal(ntohs(sin->sin_port), 0);
    assert_int_equal(sin->sin_addr.s_addr, 0);

    assert_int_equal(util_parse_hostport("localhost:80", &ss, &len), 0);
    assert_int_equal(ntohl(sin->sin_addr.s_addr), 0x7f000001);
    assert_int_equal(ntohs(sin->sin_port), 80);

    assert_int_equal(util_parse_hostport("10.1.2.3:65535", &ss, &len), 0);
    assert_int_equal(ntohs(sin->sin_port), 65535);
}

static void test_hostport_ipv6(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(util_parse_hostport("[::1]:9090", &ss, &len), 0);
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    assert_int_equal(sin6->sin6_family, AF_INET6);
    assert_int_equal(ntohs(sin6->sin6_port), 9090);
    assert_memory_equal(&sin6->sin6_addr, &in6addr_loopback, sizeof(struct in6_addr));
    assert_int_equal(len, sizeof(struct sockaddr_in6));

    assert_int_equal(util_parse_hostport("[::]:0", &ss, &len), 0);
    assert_int_equal(util_parse_hostport("[2001:db8::5]:443", &ss, &len), 0);
}

static void test_hostport_errors(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len;
    const char *bad[] = {"",
                         "127.0.0.1",
                         "127.0.0.1:",
                         ":80",
                         "127.0.0.1:65536",
                         "127.0.0.1:-1",
                         "127.0.0.1:+80",
                         "127.0.0.1:80x",
                         "::1:80",
                         "[::1]",
                         "[::1]80",
                         "[]:80",
                         "[127.0.0.1]:80",
                         "example.com:80",
                         "256.0.0.1:80",
                         "1.2.3:80",
                         "127.0.0.1:123456",
                         "localhost:",
                         " 127.0.0.1:80",
                         "[::1]:80 "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (util_parse_hostport(bad[i], &ss, &len) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(util_parse_hostport(NULL, &ss, &len), -EINVAL);
}

static void test_sha256(void **state)
{
    (void)state;
    char hex[65];
    util_sha256_hex("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    util_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    uint8_t raw[32];
    util_sha256("abc", 3, raw);
    assert_int_equal(raw[0], 0xba);
    assert_int_equal(raw[31], 0xad);
    /* the thread's context is reused: a longer input right after, then "abc" again */
    char block[200];
    memset(block, 'a', sizeof(block));
    util_sha256_hex(block, sizeof(block), hex);
    assert_string_equal(hex, "c2a908d98f5df987ade41b5fce213067efbcc21ef2240212a41e54b5e7c28ae5");
    util_sha256_hex("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static void test_u64_dec(void **state)
{
    (void)state;
    char out[21];
    assert_int_equal(util_u64_dec(0, out), 1);
    assert_string_equal(out, "0");
    assert_int_equal(util_u64_dec(9, out), 1);
    assert_string_equal(out, "9");
    assert_int_equal(util_u64_dec(10, out), 2);
    assert_string_equal(out, "10");
    assert_int_equal(util_u64_dec(1234567890123ull, out), 13);
    assert_string_equal(out, "1234567890123");
    assert_int_equal(util_u64_dec(UINT64_MAX, out), 20);
    assert_string_equal(out, "18446744073709551615");
    char hex[17] = {0};
    util_hex64(0, hex);
    assert_string_equal(hex, "0000000000000000");
    util_hex64(0x0123456789abcdefull, hex);
    assert_string_equal(hex, "0123456789abcdef");
    util_hex64(UINT64_MAX, hex);
    assert_string_equal(hex, "ffffffffffffffff");
}

static void test_random_and_request_id(void **state)
{
    (void)state;
    uint8_t a[32] = {0}, b[32] = {0}, zero[32] = {0};
    assert_int_equal(util_random_bytes(a, sizeof(a)), 0);
    assert_int_equal(util_random_bytes(b, sizeof(b)), 0);
    assert_false(util_ct_equal(a, b, sizeof(a)));
    assert_false(util_ct_equal(a, zero, sizeof(a)));
    assert_int_equal(util_random_bytes(a, 0), 0);

    char id1[33], id2[33];
    util_request_id_new(id1);
    util_request_id_new(id2);
    assert_int_equal(strlen(id1), 32);
    assert_string_not_equal(id1, id2);
    for (size_t i = 0; i < 32; i++)
        assert_non_null(strchr("0123456789abcdef", id1[i]));
    assert_true(util_request_id_sane(id1, strlen(id1)));
}

static void test_request_id_sane(void **state)
{
    (void)state;
    assert_true(util_request_id_sane("a", 1));
    assert_true(util_request_id_sane("req-1.2_3:ABC", 13));
    char max[65];
    memset(max, 'x', 64);
    max[64] = '\0';
    assert_true(util_request_id_sane(max, 64));
    char over[66];
    memset(over, 'x', 65);
    over[65] = '\0';
    assert_false(util_request_id_sane(over, 65));
    assert_false(util_request_id_sane("", 0));
    assert_false(util_request_id_sane(NULL, 3));
    assert_false(util_request_id_sane("a b", 3));
    assert_false(util_request_id_sane("a\nb", 3));
    assert_false(util_request_id_sane("a/b", 3));
    assert_false(util_request_id_sane("a\"b", 3));
    assert_false(util_request_id_sane("a\0b", 3));
    assert_false(util_request_id_sane("caf\xc3\xa9", 5));
    assert_true(util_request_id_sane("abc-and-garbage after", 3)); /* only len bytes count */
}

static void test_base64url(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(util_base64url((const uint8_t *)"", 0, out, sizeof(out)), 0);
    assert_string_equal(out, "");
    assert_int_equal(util_base64url((const uint8_t *)"f", 1, out, sizeof(out)), 2);
    assert_string_equal(out, "Zg");
    assert_int_equal(util_base64url((const uint8_t *)"fo", 2, out, sizeof(out)), 3);
    assert_string_equal(out, "Zm8");
    assert_int_equal(util_base64url((const uint8_t *)"foo", 3, out, sizeof(out)), 4);
    assert_string_equal(out, "Zm9v");
    assert_int_equal(util_base64url((const uint8_t *)"foobar", 6, out, sizeof(out)), 8);
    assert_string_equal(out, "Zm9vYmFy");
    const uint8_t special[] = {0xfb, 0xff, 0xbf};
    assert_int_equal(util_base64url(special, 3, out, sizeof(out)), 4);
    assert_string_equal(out, "-_-_");
    /* Too small: exactly the length without room for the NUL. */
    assert_int_equal(util_base64url((const uint8_t *)"foobar", 6, out, 8), 0);
    assert_string_equal(out, "");
    assert_int_equal(util_base64url((const uint8_t *)"foobar", 6, out, 9), 8);
    assert_int_equal(UTIL_BASE64URL_LEN(32), 43);
}

static void test_base64_decode(void **state)
{
    (void)state;
    uint8_t out[64];
    size_t n = 99;
    assert_int_equal(util_base64_decode("", 0, out, sizeof(out), &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(util_base64_decode("Zm9vYmFy", 8, out, sizeof(out), &n), 0);
    assert_int_equal(n, 6);
    assert_memory_equal(out, "foobar", 6);
    assert_int_equal(util_base64_decode("Zg==", 4, out, sizeof(out), &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 'f');
    assert_int_equal(util_base64_decode("Zm8=", 4, out, sizeof(out), &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(util_base64_decode("Zm8", 3, out, sizeof(out), &n), 0); /* unpadded */
    assert_int_equal(n, 2);
    assert_int_equal(util_base64_decode("Zm9v\nYmFy\r\n", 11, out, sizeof(out), &n), 0);
    assert_int_equal(n, 6);
    assert_int_equal(util_base64_decode("+/+/", 4, out, sizeof(out), &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(out[0], 0xfb);

    const char *bad[] = {"Z", "Zm9vY", "Zg=", "Zg===", "Z===", "=Zg=", "Zg==Zg==", "Zm9v-_", "Zm9v!", "Zm=9"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (util_base64_decode(bad[i], strlen(bad[i]), out, sizeof(out), &n) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    /* Too small an output buffer: error and nothing left behind. */
    memset(out, 0, sizeof(out));
    assert_int_equal(util_base64_decode("Zm9vYmFy", 8, out, 5, &n), -ENOBUFS);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(out[i], 0);
    assert_int_equal(util_base64_decode("Zm9vYg", 6, out, 3, &n), -ENOBUFS);
    assert_int_equal(util_base64_decode("Zm9vYg", 6, out, 4, &n), 0);
    assert_int_equal(n, 4);
}

/* Standard base64 of random data via url-safe encoding + alphabet swap + padding, decoded. */
static void test_base64_round_trip(void **state)
{
    (void)state;
    for (size_t len = 0; len <= 70; len++) {
        uint8_t in[70], out[80];
        char enc[128];
        assert_int_equal(util_random_bytes(in, len), 0);
        size_t n = util_base64url(in, len, enc, sizeof(enc));
        assert_int_equal(n, UTIL_BASE64URL_LEN(len));
        for (size_t i = 0; i < n; i++) {
            if (enc[i] == '-')
                enc[i] = '+';
            else if (enc[i] == '_')
                enc[i] = '/';
        }
        size_t padded = n;
        while (padded % 4)
            enc[padded++] = '=';
        enc[padded] = '\0';
        size_t outlen = 0;
        assert_int_equal(util_base64_decode(enc, padded, out, sizeof(out), &outlen), 0);
        assert_int_equal(outlen, len);
        assert_memory_equal(in, out, len);
        assert_int_equal(util_base64_decode(enc, n, out, UTIL_BASE64_DECODED_MAX(n), &outlen), 0);
        assert_int_equal(outlen, len);
    }
}

static void test_rfc3339_format(void **state)
{
    (void)state;
    char out[32];
    assert_int_equal(util_format_rfc3339(0, out), 0);
    assert_string_equal(out, "1970-01-01T00:00:00Z");
    assert_int_equal(util_format_rfc3339(1795428000, out), 0);
    assert_string_equal(out, "2026-11-23T10:00:00Z");
    assert_int_equal(util_format_rfc3339(951782400, out), 0); /* leap day 2000 */
    assert_string_equal(out, "2000-02-29T00:00:00Z");
    assert_int_equal(util_format_rfc3339(-1, out), 0);
    assert_string_equal(out, "1969-12-31T23:59:59Z");
    assert_int_equal(util_format_rfc3339(253402300799LL, out), 0);
    assert_string_equal(out, "9999-12-31T23:59:59Z");
    assert_int_equal(util_format_rfc3339(253402300800LL, out), -EINVAL);
    assert_int_equal(util_format_rfc3339(-62167219201LL, out), -EINVAL);
    assert_int_equal(util_format_rfc3339(INT64_MAX, out), -EINVAL);
    assert_int_equal(util_format_rfc3339(INT64_MIN, out), -EINVAL);
}

static void test_rfc3339_parse(void **state)
{
    (void)state;
    int64_t t = 0;
    assert_int_equal(util_parse_rfc3339("2026-11-23T10:00:00Z", &t), 0);
    assert_int_equal(t, 1795428000);
    assert_int_equal(util_parse_rfc3339("2026-11-23T12:00:00+02:00", &t), 0);
    assert_int_equal(t, 1795428000);
    assert_int_equal(util_parse_rfc3339("2026-11-23T05:30:00-04:30", &t), 0);
    assert_int_equal(t, 1795428000);
    assert_int_equal(util_parse_rfc3339("2026-11-23t10:00:00.123456789z", &t), 0);
    assert_int_equal(t, 1795428000);
    assert_int_equal(util_parse_rfc3339("2026-11-23 10:00:00Z", &t), 0);
    assert_int_equal(util_parse_rfc3339("1969-12-31T23:59:59Z", &t), 0);
    assert_int_equal(t, -1);
    assert_int_equal(util_parse_rfc3339("2024-02-29T00:00:00Z", &t), 0);
    assert_int_equal(util_parse_rfc3339("2016-12-31T23:59:60Z", &t), 0); /* leap second */
    assert_int_equal(t, 1483228800);

    const char *bad[] = {"",
                         "2026-11-23",
                         "2026-11-23T10:00:00",
                         "2026-11-23T10:00Z",
                         "2026-13-01T00:00:00Z",
                         "2026-00-01T00:00:00Z",
                         "2026-02-29T00:00:00Z",
                         "2100-02-29T00:00:00Z",
                         "2026-04-31T00:00:00Z",
                         "2026-11-23T24:00:00Z",
                         "2026-11-23T10:60:00Z",
                         "2026-11-23T10:00:61Z",
                         "2026-11-23T10:00:00+2:00",
                         "2026-11-23T10:00:00+0200",
                         "2026-11-23T10:00:00+24:00",
                         "2026-11-23T10:00:00.Z",
                         "2026-11-23T10:00:00.1234567890Z",
                         "2026-11-23T10:00:00Zjunk",
                         "2026-11-23X10:00:00Z",
                         "26-11-23T10:00:00Z",
                         "+2026-11-23T10:00:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (util_parse_rfc3339(bad[i], &t) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    assert_int_equal(util_parse_rfc3339(NULL, &t), -EINVAL);
}

static void test_rfc3339_round_trip(void **state)
{
    (void)state;
    /* Every day boundary and odd seconds across a wide range, including before 1970. */
    for (int64_t s = -62167219200LL; s <= 253402300799LL; s += 86400LL * 37 + 3607) {
        char out[32];
        int64_t back = 0;
        assert_int_equal(util_format_rfc3339(s, out), 0);
        assert_int_equal(util_parse_rfc3339(out, &back), 0);
        if (back != s)
            fail_msg("%lld -> %s -> %lld", (long long)s, out, (long long)back);
    }
}

static void test_ct_equal(void **state)
{
    (void)state;
    assert_true(util_ct_equal("abc", "abc", 3));
    assert_false(util_ct_equal("abc", "abd", 3));
    assert_true(util_ct_equal("abc", "abd", 2));
    assert_true(util_ct_equal("", "", 0));
}

static char tmpdir[64];

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/llmrelay-test-util-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static void write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static void test_read_file(void **state)
{
    (void)state;
    char path[128];
    char *buf = NULL;
    size_t len = 0;

    snprintf(path, sizeof(path), "%s/token", tmpdir);
    write_file(path, "s3cret-token\r\n", 14);
    assert_int_equal(util_read_file(path, 1024, &buf, &len), 0);
    assert_int_equal(len, 14);
    assert_string_equal(buf, "s3cret-token\r\n");
    util_trim_newline(buf);
    assert_string_equal(buf, "s3cret-token");
    free(buf);

    /* Exactly max is fine, one more byte is not. */
    assert_int_equal(util_read_file(path, 14, &buf, &len), 0);
    assert_int_equal(len, 14);
    free(buf);
    assert_int_equal(util_read_file(path, 13, &buf, &len), -EFBIG);

    snprintf(path, sizeof(path), "%s/empty", tmpdir);
    write_file(path, "", 0);
    assert_int_equal(util_read_file(path, 16, &buf, &len), 0);
    assert_int_equal(len, 0);
    assert_string_equal(buf, "");
    free(buf);

    snprintf(path, sizeof(path), "%s/missing", tmpdir);
    assert_int_equal(util_read_file(path, 16, &buf, &len), -ENOENT);
    assert_int_equal(util_read_file(tmpdir, 16, &buf, &len), -EINVAL);

    /* A file whose size fstat cannot know (procfs reports 0) is read in full, bounded. */
    assert_int_equal(util_read_file("/proc/self/status", 1 << 20, &buf, &len), 0);
    assert_true(len > 0);
    assert_non_null(strstr(buf, "Name:"));
    free(buf);
    assert_int_equal(util_read_file("/proc/self/status", 10, &buf, &len), -EFBIG);
}

static void test_trim_newline(void **state)
{
    (void)state;
    char a[] = "abc\n", b[] = "abc\r\n\n", c[] = "abc", d[] = "\n", e[] = "a\nb\n";
    util_trim_newline(a);
    util_trim_newline(b);
    util_trim_newline(c);
    util_trim_newline(d);
    util_trim_newline(e);
    assert_string_equal(a, "abc");
    assert_string_equal(b, "abc");
    assert_string_equal(c, "abc");
    assert_string_equal(d, "");
    assert_string_equal(e, "a\nb");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostport_ipv4),
        cmocka_unit_test(test_hostport_ipv6),
        cmocka_unit_test(test_hostport_errors),
        cmocka_unit_test(test_sha256),
        cmocka_unit_test(test_u64_dec),
        cmocka_unit_test(test_random_and_request_id),
        cmocka_unit_test(test_request_id_sane),
        cmocka_unit_test(test_base64url),
        cmocka_unit_test(test_base64_decode),
        cmocka_unit_test(test_base64_round_trip),
        cmocka_unit_test(test_rfc3339_format),
        cmocka_unit_test(test_rfc3339_parse),
        cmocka_unit_test(test_rfc3339_round_trip),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test_setup_teardown(test_read_file, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_trim_newline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
