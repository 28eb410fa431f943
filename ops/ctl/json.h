/*
 * json.h — yajl helpers for llmrelayctl: reading fields from yajl_tree values, writing
 * trees back out (for --json), making text cells of values, printing aligned tables and
 * "key: value" blocks, and checking JSON number syntax of command-line values.
 */
#ifndef LLMRELAY_OPS_CTL_JSON_H
#define LLMRELAY_OPS_CTL_JSON_H

#include <stddef.h>
#include <stdio.h>

#include <yajl/yajl_gen.h>
#include <yajl/yajl_tree.h>

/* Looks up a dotted-free path of object keys ("limits", "rpm", NULL style, given as
 * varargs ending with NULL). Returns a borrowed pointer into v, or NULL. */
yajl_val ctl_json_get(yajl_val v, ...) __attribute__((sentinel));

/* Wipes every string and number text in the tree, then frees it. NULL is fine. */
void ctl_json_free(yajl_val v);

/* Writes v to out as JSON (pretty, 2-space indent) followed by a newline. */
int ctl_json_print(FILE *out, yajl_val v);

/* A text cell for v, owned by the caller (free()): strings as they are (control
 * characters replaced by '?'), numbers as their JSON text, booleans, arrays joined with
 * ", ", objects as "k=v" joined with ", "; null or absent (v == NULL) gives null_text.
 * Returns NULL only when out of memory. */
char *ctl_json_text(yajl_val v, const char *null_text);

/* Adds a string to a yajl_gen (len from strlen). */
yajl_gen_status ctl_gen_str(yajl_gen g, const char *s);

/* A compact generator that checks UTF-8 (owned by the caller: ctl_gen_dispose). */
yajl_gen ctl_gen_new(void);

/* Wipes the generator's buffer (it may hold upstream keys) and frees it. NULL is fine. */
void ctl_gen_dispose(yajl_gen g);

/* 1 when s is a JSON number (RFC 8259 grammar), else 0. */
int ctl_is_json_number(const char *s);

/* 1 when s is a decimal integer in int64 range (optional leading '-'); *out gets it. */
int ctl_parse_int(const char *s, long long *out);

/* Prints a table: ncols headers, then nrows rows of cells (cells[row * ncols + col],
 * borrowed), columns padded to their widest cell (UTF-8 aware), two spaces apart. */
void ctl_print_table(FILE *out, const char *const *headers, size_t ncols, char *const *cells, size_t nrows);

/* Prints "key: value" lines with the values aligned (keys and values borrowed). */
void ctl_print_kv(FILE *out, const char *const *keys, char *const *values, size_t n);

/* Frees n cells (free() each; NULL entries fine). */
void ctl_free_cells(char **cells, size_t n);

#endif
