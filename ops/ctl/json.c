/*
 * json.c — yajl helpers for llmrelayctl.
 *
 * Answers are read with yajl_tree (whole answers are small and bounded by
 * CTL_MAX_RESPONSE) and written back out with yajl_gen for --json, number texts kept
 * exactly as the server wrote them. Text mode turns values into cells and prints them as
 * aligned tables or "key: value" blocks; control characters from the server are replaced
 * so an answer cannot drive the terminal. Trees are wiped before they are freed, since an
 * answer may carry a new relay key.
 */
#include "ops/ctl/json.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

yajl_val ctl_json_get(yajl_val v, ...)
{
    va_list ap;
    va_start(ap, v);
    const char *key;
    while (v != NULL && (key = va_arg(ap, const char *)) != NULL) {
        yajl_val found = NULL;
        if (YAJL_IS_OBJECT(v)) {
            for (size_t i = 0; i < v->u.object.len; i++) {
                if (strcmp(v->u.object.keys[i], key) == 0) {
                    found = v->u.object.values[i];
                    break;
                }
            }
        }
        v = found;
    }
    va_end(ap);
    return v;
}

static void wipe_tree(yajl_val v)
{
    if (v == NULL)
        return;
    if (YAJL_IS_STRING(v) && v->u.string != NULL) {
        explicit_bzero(v->u.string, strlen(v->u.string));
    } else if (YAJL_IS_NUMBER(v) && v->u.number.r != NULL) {
        explicit_bzero(v->u.number.r, strlen(v->u.number.r));
    } else if (YAJL_IS_OBJECT(v)) {
        for (size_t i = 0; i < v->u.object.len; i++) {
            explicit_bzero((char *)v->u.object.keys[i], strlen(v->u.object.keys[i]));
            wipe_tree(v->u.object.values[i]);
        }
    } else if (YAJL_IS_ARRAY(v)) {
        for (size_t i = 0; i < v->u.array.len; i++)
            wipe_tree(v->u.array.values[i]);
    }
}

void ctl_json_free(yajl_val v)
{
    if (v == NULL)
        return;
    wipe_tree(v);
    yajl_tree_free(v);
}

yajl_gen_status ctl_gen_str(yajl_gen g, const char *s)
{
    return yajl_gen_string(g, (const unsigned char *)s, strlen(s));
}

static yajl_gen_status gen_tree(yajl_gen g, yajl_val v)
{
    yajl_gen_status st = yajl_gen_status_ok;
    if (v == NULL || YAJL_IS_NULL(v))
        return yajl_gen_null(g);
    if (YAJL_IS_STRING(v))
        return ctl_gen_str(g, v->u.string);
    if (YAJL_IS_NUMBER(v))
        return yajl_gen_number(g, v->u.number.r, strlen(v->u.number.r));
    if (YAJL_IS_TRUE(v))
        return yajl_gen_bool(g, 1);
    if (YAJL_IS_FALSE(v))
        return yajl_gen_bool(g, 0);
    if (YAJL_IS_OBJECT(v)) {
        if ((st = yajl_gen_map_open(g)) != yajl_gen_status_ok)
            return st;
        for (size_t i = 0; i < v->u.object.len; i++) {
            if ((st = ctl_gen_str(g, v->u.object.keys[i])) != yajl_gen_status_ok)
                return st;
            if ((st = gen_tree(g, v->u.object.values[i])) != yajl_gen_status_ok)
                return st;
        }
        return yajl_gen_map_close(g);
    }
    if (YAJL_IS_ARRAY(v)) {
        if ((st = yajl_gen_array_open(g)) != yajl_gen_status_ok)
            return st;
        for (size_t i = 0; i < v->u.array.len; i++)
            if ((st = gen_tree(g, v->u.array.values[i])) != yajl_gen_status_ok)
                return st;
        return yajl_gen_array_close(g);
    }
    return yajl_gen_invalid_string;
}

int ctl_json_print(FILE *out, yajl_val v)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g == NULL)
        return -ENOMEM;
    yajl_gen_config(g, yajl_gen_beautify, 1);
    yajl_gen_config(g, yajl_gen_indent_string, "  ");
    int rc = 0;
    if (gen_tree(g, v) != yajl_gen_status_ok) {
        rc = -EPROTO;
    } else {
        const unsigned char *text;
        size_t len;
        yajl_gen_get_buf(g, &text, &len);
        /* beautify already ends the top-level value with a newline */
        fwrite(text, 1, len, out);
        if (len == 0 || text[len - 1] != '\n')
            fputc('\n', out);
        explicit_bzero((void *)text, len);
    }
    yajl_gen_free(g);
    return rc;
}

/* A growable string for building cells. */
struct strbuf {
    char *data;
    size_t len;
    size_t cap;
    int failed;
};

static void sb_add(struct strbuf *sb, const char *s, size_t n)
{
    if (sb->failed)
        return;
    if (sb->len + n + 1 > sb->cap) {
        size_t cap = sb->cap ? sb->cap * 2 : 64;
        while (cap < sb->len + n + 1)
            cap *= 2;
        /* allocate-copy-wipe rather than realloc: a cell may hold a new relay key */
        char *grown = malloc(cap);
        if (grown == NULL) {
            sb->failed = 1;
            return;
        }
        if (sb->data != NULL) {
            memcpy(grown, sb->data, sb->len + 1);
            explicit_bzero(sb->data, sb->cap);
            free(sb->data);
        }
        sb->data = grown;
        sb->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        sb->data[sb->len++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    sb->data[sb->len] = '\0';
}

static void sb_str(struct strbuf *sb, const char *s)
{
    sb_add(sb, s, strlen(s));
}

static void text_of(struct strbuf *sb, yajl_val v, const char *null_text)
{
    if (v == NULL || YAJL_IS_NULL(v)) {
        sb_str(sb, null_text);
    } else if (YAJL_IS_STRING(v)) {
        sb_str(sb, v->u.string);
    } else if (YAJL_IS_NUMBER(v)) {
        sb_str(sb, v->u.number.r);
    } else if (YAJL_IS_TRUE(v)) {
        sb_str(sb, "true");
    } else if (YAJL_IS_FALSE(v)) {
        sb_str(sb, "false");
    } else if (YAJL_IS_ARRAY(v)) {
        for (size_t i = 0; i < v->u.array.len; i++) {
            if (i > 0)
                sb_str(sb, ", ");
            text_of(sb, v->u.array.values[i], "null");
        }
    } else if (YAJL_IS_OBJECT(v)) {
        for (size_t i = 0; i < v->u.object.len; i++) {
            if (i > 0)
                sb_str(sb, ", ");
            sb_str(sb, v->u.object.keys[i]);
            sb_str(sb, "=");
            text_of(sb, v->u.object.values[i], "null");
        }
    }
}

char *ctl_json_text(yajl_val v, const char *null_text)
{
    struct strbuf sb = {0};
    sb_add(&sb, "", 0);
    text_of(&sb, v, null_text);
    if (sb.failed) {
        free(sb.data);
        return NULL;
    }
    return sb.data;
}

int ctl_is_json_number(const char *s)
{
    const char *p = s;
    if (*p == '-')
        p++;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (*p >= '0' && *p <= '9')
            p++;
    } else {
        return 0;
    }
    if (*p == '.') {
        p++;
        if (!(*p >= '0' && *p <= '9'))
            return 0;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-')
            p++;
        if (!(*p >= '0' && *p <= '9'))
            return 0;
        while (*p >= '0' && *p <= '9')
            p++;
    }
    return *p == '\0' && p - s <= 64;
}

int ctl_parse_int(const char *s, long long *out)
{
    const char *p = s;
    if (*p == '-')
        p++;
    if (*p < '0' || *p > '9')
        return 0;
    for (; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return 0;
    *out = v;
    return 1;
}

/* Display width of a UTF-8 string: code points, continuation bytes not counted. */
static size_t display_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}

static void print_padded(FILE *out, const char *s, size_t width, int last)
{
    fputs(s, out);
    if (last)
        return;
    for (size_t w = display_width(s); w < width + 2; w++)
        fputc(' ', out);
}

void ctl_print_table(FILE *out, const char *const *headers, size_t ncols, char *const *cells, size_t nrows)
{
    size_t widths[32] = {0};
    if (ncols > 32)
        ncols = 32;
    for (size_t c = 0; c < ncols; c++) {
        widths[c] = display_width(headers[c]);
        for (size_t r = 0; r < nrows; r++) {
            size_t w = display_width(cells[r * ncols + c]);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    for (size_t c = 0; c < ncols; c++)
        print_padded(out, headers[c], widths[c], c + 1 == ncols);
    fputc('\n', out);
    for (size_t r = 0; r < nrows; r++) {
        for (size_t c = 0; c < ncols; c++)
            print_padded(out, cells[r * ncols + c], widths[c], c + 1 == ncols);
        fputc('\n', out);
    }
}

void ctl_print_kv(FILE *out, const char *const *keys, char *const *values, size_t n)
{
    size_t width = 0;
    for (size_t i = 0; i < n; i++)
        if (strlen(keys[i]) + 1 > width)
            width = strlen(keys[i]) + 1;
    for (size_t i = 0; i < n; i++) {
        fprintf(out, "%s:", keys[i]);
        for (size_t w = strlen(keys[i]) + 1; w < width + 1; w++)
            fputc(' ', out);
        fprintf(out, "%s\n", values[i]);
    }
}

void ctl_free_cells(char **cells, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (cells[i] != NULL) {
            explicit_bzero(cells[i], strlen(cells[i]));
            free(cells[i]);
        }
        cells[i] = NULL;
    }
}

yajl_gen ctl_gen_new(void)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g != NULL)
        yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    return g;
}

void ctl_gen_dispose(yajl_gen g)
{
    if (g == NULL)
        return;
    const unsigned char *text;
    size_t len;
    if (yajl_gen_get_buf(g, &text, &len) == yajl_gen_status_ok)
        explicit_bzero((void *)text, len);
    yajl_gen_free(g);
}
