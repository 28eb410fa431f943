/* picohttpparser.h — declarations of the picohttpparser functions that Debian's libh2o.so
 * exports (h2o bundles the parser and exports its symbols, but libh2o-dev ships no header
 * for it). Written from the library's documented API; only what upstream_h1.c uses.
 *
 * The layout of struct phr_chunked_decoder is part of that API (callers allocate it and
 * zero-fill it before the first call) and matches the version bundled with h2o 2.2.5. */
#ifndef LLMRELAY_NODE_COMPAT_PICOHTTPPARSER_H
#define LLMRELAY_NODE_COMPAT_PICOHTTPPARSER_H

#include <stddef.h>
#include <sys/types.h>

/* One header line: name and value point into the parsed buffer (name is NULL for the
 * continuation line of a multi-line header). */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* Parses a response head in buf[0, len). *num_headers is the capacity of headers on entry
 * and the number parsed on return. last_len is the length already known to be incomplete
 * (0 to parse from scratch). Returns the length of the head, -2 when incomplete, -1 when
 * malformed. */
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status, const char **msg, size_t *msg_len,
                       struct phr_header *headers, size_t *num_headers, size_t last_len);

/* Zero-filled before the first call; set consume_trailer to also consume the trailer. */
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};

/* Decodes chunked data in place: on return buf[0, *bufsz) holds the decoded bytes. Returns
 * -2 when more data is needed (all input consumed), -1 on malformed input, or, once the
 * last chunk (and trailer) ended, the number of undecoded bytes left after the decoded
 * ones. */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

#endif
