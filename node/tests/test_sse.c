/* Unit tests for node/sse: every stream is parsed whole, split at every byte, and byte by
 * byte, and all three must report the same events, whose raws concatenate to the input. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <cmocka.h>

#include "node/sse.h"

#define MAX_EVENTS 64

typedef struct rec_event {
    char name[64];
    char data[256];
    bool has_data;
    bool terminated;
    size_t raw_len;
} rec_event_t;

typedef struct recorder {
    rec_event_t ev[MAX_EVENTS];
    size_t n;
    char raw[4096];
    size_t raw_len;
    size_t stop_after; /* return 7 after this many events (0: never) */
} recorder_t;

static int record_cb(void *data, const sse_event_t *ev)
{
    recorder_t *rec = data;
    assert_true(rec->n < MAX_EVENTS);
    rec_event_t *e = &rec->ev[rec->n++];
    assert_true(ev->name_len < sizeof(e->name));
    assert_true(ev->data_len < sizeof(e->data));
    memcpy(e->name, ev->name, ev->name_len);
    e->name[ev->name_len] = 0;
    memcpy(e->data, ev->data, ev->data_len);
    e->data[ev->data_len] = 0;
    e->has_data = ev->has_data;
    e->terminated = ev->terminated;
    e->raw_len = ev->raw_len;
    assert_true(rec->raw_len + ev->raw_len <= sizeof(rec->raw));
    memcpy(rec->raw + rec->raw_len, ev->raw, ev->raw_len);
    rec->raw_len += ev->raw_len;
    if (rec->stop_after != 0 && rec->n == rec->stop_after)
        return 7;
    return 0;
}

/* Parses s in pieces cut at the given points (sorted, ncuts of them). */
static int parse_split(const char *s, size_t len, const size_t *cuts, size_t ncuts, recorder_t *rec, size_t max)
{
    sse_parser_t p;
    sse_parser_init(&p, max);
    memset(rec, 0, sizeof(*rec));
    size_t prev = 0;
    int r = 0;
    for (size_t i = 0; i <= ncuts && r == 0; i++) {
        size_t next = i < ncuts ? cuts[i] : len;
        /* copy each piece to its own heap block so ASan catches reads past it */
        uint8_t *piece = malloc(next - prev + 1);
        memcpy(piece, s + prev, next - prev);
        r = sse_parser_feed(&p, piece, next - prev, record_cb, rec);
        free(piece);
        prev = next;
    }
    if (r == 0)
        r = sse_parser_finish(&p, record_cb, rec);
    sse_parser_dispose(&p);
    return r;
}

static void assert_same(const recorder_t *a, const recorder_t *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_string_equal(a->ev[i].name, b->ev[i].name);
        assert_string_equal(a->ev[i].data, b->ev[i].data);
        assert_int_equal(a->ev[i].has_data, b->ev[i].has_data);
        assert_int_equal(a->ev[i].terminated, b->ev[i].terminated);
    }
    assert_int_equal(a->raw_len, b->raw_len);
    assert_memory_equal(a->raw, b->raw, a->raw_len);
}

/* Parses whole, then at every split point, then byte by byte; checks all agree and that the
 * raws rebuild the input. Returns the whole-parse record in *out. */
static void parse_all_ways(const char *s, recorder_t *out)
{
    size_t len = strlen(s);
    static recorder_t other;
    assert_int_equal(parse_split(s, len, NULL, 0, out, 4096), 0);
    assert_int_equal(out->raw_len, len);
    assert_memory_equal(out->raw, s, len);
    for (size_t cut = 1; cut < len; cut++) {
        assert_int_equal(parse_split(s, len, &cut, 1, &other, 4096), 0);
        /* a "\r\n" cut between "\r" and "\n" moves the "\n" to the next event */
        assert_int_equal(other.raw_len, len);
        assert_memory_equal(other.raw, s, len);
        bool crlf_cut = s[cut - 1] == '\r' && s[cut] == '\n';
        if (!crlf_cut)
            assert_same(out, &other);
    }
    size_t *cuts = malloc(len * sizeof(size_t));
    for (size_t i = 0; i + 1 < len; i++)
        cuts[i] = i + 1;
    assert_int_equal(parse_split(s, len, cuts, len > 0 ? len - 1 : 0, &other, 4096), 0);
    free(cuts);
    assert_int_equal(other.raw_len, len);
    assert_memory_equal(other.raw, s, len);
    if (strstr(s, "\r\n") == NULL)
        assert_same(out, &other);
}

static void test_openai_stream(void **state)
{
    (void)state;
    const char *s = "data: {\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n"
                    "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\n\n"
                    "data: [DONE]\n\n";
    recorder_t rec;
    parse_all_ways(s, &rec);
    assert_int_equal(rec.n, 3);
    assert_string_equal(rec.ev[0].data, "{\"id\":\"c1\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}");
    assert_string_equal(rec.ev[2].data, "[DONE]");
    assert_string_equal(rec.ev[2].name, "");
    assert_true(rec.ev[2].terminated);
}

static void test_named_events_multiline_nospace(void **state)
{
    (void)state;
    const char *s = "event: response.created\ndata:{\"a\":1}\n\n"
                    "event:x\ndata: line1\ndata:line2\ndata\nid: 5\nretry: 10\n\n"
                    "data:\n\n";
    recorder_t rec;
    parse_all_ways(s, &rec);
    assert_int_equal(rec.n, 3);
    assert_string_equal(rec.ev[0].name, "response.created");
    assert_string_equal(rec.ev[0].data, "{\"a\":1}");
    assert_string_equal(rec.ev[1].name, "x");
    assert_string_equal(rec.ev[1].data, "line1\nline2\n");
    assert_true(rec.ev[2].has_data);
    assert_string_equal(rec.ev[2].data, "");
}

static void test_crlf_and_cr(void **state)
{
    (void)state;
    recorder_t rec;
    parse_all_ways("event: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: 3\r\n\r\n", &rec);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.ev[0].name, "a");
    assert_string_equal(rec.ev[0].data, "1\n2");
    assert_string_equal(rec.ev[1].data, "3");
    assert_int_equal(rec.ev[0].raw_len, strlen("event: a\r\ndata: 1\r\ndata: 2\r\n\r\n"));

    parse_all_ways("data: a\rdata: b\r\rdata: c\r\r", &rec);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.ev[0].data, "a\nb");
    assert_string_equal(rec.ev[1].data, "c");

    /* mixed endings */
    parse_all_ways("data: a\r\ndata: b\n\rdata: c\r\n\n", &rec);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.ev[0].data, "a\nb");
    assert_string_equal(rec.ev[1].data, "c");
}

static void test_crlf_split_byte_by_byte(void **state)
{
    (void)state;
    /* cut between "\r" and "\n" of the blank line: event reported at once, "\n" leads the next */
    const char *s = "data: 1\r\n\r\ndata: 2\r\n\r\n";
    size_t cut = strlen("data: 1\r\n\r");
    recorder_t rec;
    assert_int_equal(parse_split(s, strlen(s), &cut, 1, &rec, 4096), 0);
    assert_int_equal(rec.n, 2);
    assert_string_equal(rec.ev[0].data, "1");
    assert_int_equal(rec.ev[0].raw_len, cut);
    assert_string_equal(rec.ev[1].data, "2");
    assert_true(rec.ev[1].terminated);
    /* the stream ends right after such a "\r": the lone "\n" is reported unterminated */
    const char *t = "data: 1\r\n\r\n";
    size_t tcut = strlen(t) - 1;
    assert_int_equal(parse_split(t, strlen(t), &tcut, 1, &rec, 4096), 0);
    assert_int_equal(rec.n, 2);
    assert_false(rec.ev[1].terminated);
    assert_false(rec.ev[1].has_data);
    assert_int_equal(rec.ev[1].raw_len, 1);
}

static void test_comments_and_blank(void **state)
{
    (void)state;
    recorder_t rec;
    parse_all_ways(": keepalive\n\n: ping\ndata: x\n\n\n", &rec);
    assert_int_equal(rec.n, 3);
    assert_false(rec.ev[0].has_data);
    assert_int_equal(rec.ev[0].raw_len, strlen(": keepalive\n\n"));
    assert_true(rec.ev[1].has_data);
    assert_string_equal(rec.ev[1].data, "x");
    assert_false(rec.ev[2].has_data); /* a lone blank line is an empty event */
    assert_int_equal(rec.ev[2].raw_len, 1);
}

static void test_trailing_unterminated(void **state)
{
    (void)state;
    recorder_t rec;
    parse_all_ways("data: a\n\ndata: [DONE]\n", &rec);
    assert_int_equal(rec.n, 2);
    assert_true(rec.ev[0].terminated);
    assert_false(rec.ev[1].terminated);
    assert_string_equal(rec.ev[1].data, "[DONE]");
    parse_all_ways("data: a\n\ndata: partial", &rec);
    assert_int_equal(rec.n, 2);
    assert_false(rec.ev[1].terminated);
    assert_string_equal(rec.ev[1].data, "partial");
}

static void test_bom(void **state)
{
    (void)state;
    recorder_t rec;
    parse_all_ways("\xEF\xBB\xBF"
                   "data: x\n\n",
                   &rec);
    assert_int_equal(rec.n, 1);
    assert_string_equal(rec.ev[0].data, "x");
}

static void test_oversize(void **state)
{
    (void)state;
    recorder_t rec;
    const char *s = "data: 0123456789\n\ndata: 0123456789012345678901234567890123456789\n\n";
    /* whole buffer */
    assert_int_equal(parse_split(s, strlen(s), NULL, 0, &rec, 32), -E2BIG);
    assert_int_equal(rec.n, 1);
    /* byte by byte: the event spans feeds */
    size_t cuts[128];
    size_t n = strlen(s);
    for (size_t i = 0; i + 1 < n; i++)
        cuts[i] = i + 1;
    assert_int_equal(parse_split(s, n, cuts, n - 1, &rec, 32), -E2BIG);
    assert_int_equal(rec.n, 1);
    /* an incomplete line that grows past the bound without a terminator */
    const char *t = "data: 0123456789012345678901234567890123456789";
    size_t c = 10;
    assert_int_equal(parse_split(t, strlen(t), &c, 1, &rec, 32), -E2BIG);
    assert_int_equal(parse_split(t, strlen(t), NULL, 0, &rec, 32), -E2BIG);
    /* exactly max_event is fine */
    const char *u = "data: 0123456789\n\n"; /* 18 bytes */
    assert_int_equal(parse_split(u, strlen(u), NULL, 0, &rec, 18), 0);
    assert_int_equal(rec.n, 1);
}

static void test_callback_stop_is_sticky(void **state)
{
    (void)state;
    recorder_t rec;
    memset(&rec, 0, sizeof(rec));
    rec.stop_after = 1;
    sse_parser_t p;
    sse_parser_init(&p, 1024);
    const char *s = "data: a\n\ndata: b\n\n";
    assert_int_equal(sse_parser_feed(&p, (const uint8_t *)s, strlen(s), record_cb, &rec), 7);
    assert_int_equal(rec.n, 1);
    assert_int_equal(sse_parser_feed(&p, (const uint8_t *)s, strlen(s), record_cb, &rec), 7);
    assert_int_equal(sse_parser_finish(&p, record_cb, &rec), 7);
    assert_int_equal(rec.n, 1);
    sse_parser_dispose(&p);
}

static int count_cb(void *data, const sse_event_t *ev)
{
    (void)ev;
    (*(size_t *)data)++;
    return 0;
}

static void test_zero_copy(void **state)
{
    (void)state;
    /* events wholly inside one feed point into the feed buffer */
    const char *s = "data: a\n\ndata: b\n\n";
    sse_parser_t p;
    sse_parser_init(&p, 1024);
    size_t n = 0;
    assert_int_equal(sse_parser_feed(&p, (const uint8_t *)s, strlen(s), count_cb, &n), 0);
    assert_int_equal(n, 2);
    assert_null(p.pending.data); /* nothing was ever gathered */
    sse_parser_dispose(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_stream),
        cmocka_unit_test(test_named_events_multiline_nospace),
        cmocka_unit_test(test_crlf_and_cr),
        cmocka_unit_test(test_crlf_split_byte_by_byte),
        cmocka_unit_test(test_comments_and_blank),
        cmocka_unit_test(test_trailing_unterminated),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_callback_stop_is_sticky),
        cmocka_unit_test(test_zero_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
