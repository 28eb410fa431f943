/* config.c — parses the llmrelay daemon's flags and its YAML config file (see config.h).
 *
 * One table describes every setting: its flag name, its kind (which parser validates it),
 * where it lands in llmrelay_config_t, its default and its help line. The same apply
 * function serves defaults, YAML values and flags, so a default is held to the same rules
 * as a user's value. config_parse works in three steps: (1) tokenise argv into (option,
 * value) pairs, rejecting unknown flags and missing values, and answer --help/--version;
 * (2) apply the defaults, then the --config file (libyaml event parser: one mapping of
 * scalars, sequences allowed for join/etcd; errors carry the line number); (3) apply the
 * argv pairs in order, so the command line overrides the file wherever --config appears,
 * then derive what depends on the machine (host name, worker count).
 *
 * Values appear in error messages (truncated): settings are addresses, paths and numbers,
 * never secrets — those live in the files the settings name, which this module never reads. */
#include "node/config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <uv.h>
#include <yaml.h>

#include "node/util.h"

enum opt_kind {
    OPT_STRING,    /* non-empty, no control characters (paths) */
    OPT_NAME,      /* 1..64 of [A-Za-z0-9._-] */
    OPT_ADDR,      /* numeric ADDR:PORT, see util_parse_hostport */
    OPT_HOSTPORTS, /* HOST:PORT[,HOST:PORT...], host names allowed */
    OPT_URLS,      /* http(s)://...[,...] */
    OPT_PREFIX,    /* non-empty, normalised to end with '/' */
    OPT_BOOL,
    OPT_WORKERS,
    OPT_TOKENS,
    OPT_LOG_LEVEL,
    OPT_TLS_VERSION,
    OPT_SIZE,
    OPT_DURATION,
    OPT_ATTEMPTS,  /* unsigned, 1..CONFIG_MAX_UPSTREAM_ATTEMPTS */
    OPT_THRESHOLD, /* unsigned, 1..CHANNELS_MAX_THRESHOLD */
    OPT_CONFIG,    /* command line only from here on */
    OPT_HELP,
    OPT_VERSION,
};

#define OPT_NONZERO 1u /* durations: 0 is refused */
#define OPT_LIST 2u    /* YAML: a sequence of strings is accepted and joined with ',' */
#define NO_FIELD ((size_t)-1)

struct opt {
    const char *name; /* without the leading "--" */
    enum opt_kind kind;
    size_t offset; /* into llmrelay_config_t, or NO_FIELD */
    unsigned flags;
    const char *metavar;
    const char *def; /* default value, applied through the same parser; NULL = unset */
    const char *help;
};

#define FIELD(f) offsetof(llmrelay_config_t, f)

static const struct opt options[] = {
    {"config", OPT_CONFIG, FIELD(config_file), 0, "FILE", NULL, "YAML file with the same settings (flags override it)"},
    {"name", OPT_NAME, FIELD(name), 0, "NAME", NULL, "node name (default: the host name)"},
    {"region", OPT_NAME, FIELD(region), 0, "REGION", "default", "region of this node"},
    {"listen", OPT_ADDR, FIELD(listen), 0, "ADDR:PORT", "0.0.0.0:8443", "client API listener (TLS)"},
    {"tls-cert", OPT_STRING, FIELD(tls_cert), 0, "FILE", NULL, "PEM certificate chain for --listen"},
    {"tls-key", OPT_STRING, FIELD(tls_key), 0, "FILE", NULL, "PEM private key for --listen"},
    {"tls-self-signed", OPT_BOOL, FIELD(tls_self_signed), 0, NULL, "false", "generate a self-signed certificate (dev)"},
    {"tls-min-version", OPT_TLS_VERSION, FIELD(tls_min_version), 0, "1.3|1.2", "1.3", "lowest TLS version accepted"},
    {"listen-plain", OPT_ADDR, FIELD(listen_plain), 0, "ADDR:PORT", NULL, "cleartext client API listener"},
    {"admin-listen", OPT_ADDR, FIELD(admin_listen), 0, "ADDR:PORT", "127.0.0.1:9090", "admin API listener"},
    {"admin-token-file", OPT_STRING, FIELD(admin_token_file), 0, "FILE", NULL, "bootstrap admin token"},
    {"etcd", OPT_URLS, FIELD(etcd), OPT_LIST, "URL[,URL]", "http://127.0.0.1:2379", "etcd endpoints"},
    {"etcd-prefix", OPT_PREFIX, FIELD(etcd_prefix), 0, "PREFIX", "/llmrelay/", "prefix of every etcd key"},
    {"gossip", OPT_ADDR, FIELD(gossip), 0, "ADDR:PORT", NULL, "UDP gossip (SWIM) address"},
    {"advertise", OPT_STRING, FIELD(advertise), 0, "ADDR", NULL, "address announced to other nodes"},
    {"join", OPT_HOSTPORTS, FIELD(join), OPT_LIST, "HOST:PORT[,..]", NULL, "gossip seeds to join"},
    {"peer-listen", OPT_ADDR, FIELD(peer_listen), 0, "ADDR:PORT", NULL, "peer RPC listener"},
    {"cluster-key-file", OPT_STRING, FIELD(cluster_key_file), 0, "FILE", NULL, "base64 of 32 random bytes"},
    {"peer-tls-cert", OPT_STRING, FIELD(peer_tls_cert), 0, "FILE", NULL, "PEM certificate chain for --peer-listen"},
    {"peer-tls-key", OPT_STRING, FIELD(peer_tls_key), 0, "FILE", NULL, "PEM private key for --peer-listen"},
    {"peer-ca-file", OPT_STRING, FIELD(peer_ca_file), 0, "FILE", NULL, "CAs a peer's certificate must chain to"},
    {"data-dir", OPT_STRING, FIELD(data_dir), 0, "DIR", "./llmrelay-data", "local metadata logs"},
    {"workers", OPT_WORKERS, FIELD(workers), 0, "N", "0", "worker threads, 0 = one per core (max 256)"},
    {"log-level", OPT_LOG_LEVEL, FIELD(log_level), 0, "LEVEL", "info", "debug|info|warn|error"},
    {"max-body", OPT_SIZE, FIELD(max_body), 0, "SIZE", "32MiB", "largest request body (max 4GiB)"},
    {"usage-drain-timeout", OPT_DURATION, FIELD(usage_drain_timeout_ms), 0, "DUR", "30s",
     "keep reading an upstream this long after its client left"},
    {"shutdown-timeout", OPT_DURATION, FIELD(shutdown_timeout_ms), 0, "DUR", "60s", "SIGTERM drain bound"},
    {"retention", OPT_DURATION, FIELD(retention_ms), OPT_NONZERO, "DUR", "7d", "how long metadata is kept"},
    {"secrets-key-file", OPT_STRING, FIELD(secrets_key_file), 0, "FILE", NULL, "key encrypting upstream API keys"},
    {"upstream-ca-file", OPT_STRING, FIELD(upstream_ca_file), 0, "FILE", NULL, "extra CAs for upstream TLS"},
    {"upstream-connect-timeout", OPT_DURATION, FIELD(upstream_connect_timeout_ms), OPT_NONZERO, "DUR", "10s",
     "upstream connect bound"},
    {"upstream-first-byte-timeout", OPT_DURATION, FIELD(upstream_first_byte_timeout_ms), OPT_NONZERO, "DUR", "600s",
     "upstream time to first byte"},
    {"upstream-idle-timeout", OPT_DURATION, FIELD(upstream_idle_timeout_ms), OPT_NONZERO, "DUR", "300s",
     "longest silence within an upstream response"},
    {"default-max-output-tokens", OPT_TOKENS, FIELD(default_max_output_tokens), 0, "N", "4096",
     "output bound set upstream when a request gives none (1..10000000)"},
    {"upstream-max-attempts", OPT_ATTEMPTS, FIELD(retry_policy.max_attempts), 0, "N", "3",
     "upstream channels tried per request, the first included (1..10)"},
    {"upstream-retry-budget", OPT_DURATION, FIELD(retry_policy.budget_ms), OPT_NONZERO, "DUR", "30s",
     "no retry on another channel once this long has passed since the first attempt"},
    {"breaker-threshold", OPT_THRESHOLD, FIELD(breaker.threshold), 0, "N", "5",
     "failures within --breaker-window that open a channel's circuit breaker (1..16)"},
    {"breaker-window", OPT_DURATION, FIELD(breaker.window_ms), OPT_NONZERO, "DUR", "30s",
     "window in which --breaker-threshold failures open the breaker"},
    {"breaker-cooldown", OPT_DURATION, FIELD(breaker.cooldown_ms), OPT_NONZERO, "DUR", "30s",
     "an open breaker admits a probe after this long (doubles on reopen, up to max(5m, this))"},
    {"version", OPT_VERSION, NO_FIELD, 0, NULL, NULL, "print the version and exit"},
    {"help", OPT_HELP, NO_FIELD, 0, NULL, NULL, "print this help and exit"},
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))
#define VALUE_SHOWN 64 /* characters of a bad value echoed in an error */

static const struct opt *opt_find(const char *name, size_t len)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        if (strlen(options[i].name) == len && memcmp(options[i].name, name, len) == 0)
            return &options[i];
    return NULL;
}

/* ---- value parsers ---- */

/* Parses the leading decimal digits of s into *v; *end points past them. */
static int parse_u64_prefix(const char *s, uint64_t *v, const char **end)
{
    uint64_t r = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        return -EINVAL;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (r > (UINT64_MAX - d) / 10)
            return -ERANGE;
        r = r * 10 + d;
    }
    *v = r;
    *end = p;
    return 0;
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    uint64_t v;
    const char *unit;

    if (s == NULL)
        return -EINVAL;
    int rc = parse_u64_prefix(s, &v, &unit);
    if (rc != 0)
        return rc;
    if (*unit == '\0') {
        if (v != 0)
            return -EINVAL; /* a unit is required: "30" could be seconds or milliseconds */
        *ms = 0;
        return 0;
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(unit, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].ms)
                return -ERANGE;
            *ms = v * units[i].ms;
            return 0;
        }
    }
    return -EINVAL;
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"b", 1},
        {"k", 1ULL << 10},
        {"kib", 1ULL << 10},
        {"kb", 1000ULL},
        {"m", 1ULL << 20},
        {"mib", 1ULL << 20},
        {"mb", 1000ULL * 1000},
        {"g", 1ULL << 30},
        {"gib", 1ULL << 30},
        {"gb", 1000ULL * 1000 * 1000},
        {"t", 1ULL << 40},
        {"tib", 1ULL << 40},
        {"tb", 1000ULL * 1000 * 1000 * 1000},
    };
    uint64_t v;
    const char *unit;

    if (s == NULL)
        return -EINVAL;
    int rc = parse_u64_prefix(s, &v, &unit);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(unit, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].mult)
                return -ERANGE;
            *bytes = v * units[i].mult;
            return 0;
        }
    }
    return -EINVAL;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

static bool has_control_or_space(const char *s, bool allow_space)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f || (!allow_space && c == ' '))
            return true;
    }
    return false;
}

/* "host:port" with a non-empty host (name, IPv4 or [IPv6]) and a port 1..65535. */
static bool hostport_named_ok(const char *s, size_t len)
{
    size_t colon = len;
    while (colon > 0 && s[colon - 1] != ':')
        colon--;
    if (colon < 2 || colon == len || len - colon > 5)
        return false;
    unsigned long port = 0;
    for (size_t i = colon; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        port = port * 10 + (unsigned long)(s[i] - '0');
    }
    if (port == 0 || port > 65535)
        return false;
    size_t host_len = colon - 1;
    if (s[0] == '[')
        return host_len >= 3 && s[host_len - 1] == ']';
    return memchr(s, ':', host_len) == NULL && memchr(s, ']', host_len) == NULL;
}

static bool url_ok(const char *s, size_t len)
{
    size_t skip = 0;
    if (len > 7 && strncmp(s, "http://", 7) == 0)
        skip = 7;
    else if (len > 8 && strncmp(s, "https://", 8) == 0)
        skip = 8;
    return skip > 0 && len > skip;
}

/* Checks every comma-separated element of s with ok(). */
static bool list_ok(const char *s, bool (*ok)(const char *, size_t))
{
    const char *p = s;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (!ok(p, len))
            return false;
        if (comma == NULL)
            return true;
        p = comma + 1;
    }
}

static int set_string(char **slot, const char *value, size_t extra_slash)
{
    size_t n = strlen(value);
    char *copy = malloc(n + 1 + extra_slash);
    if (copy == NULL)
        return -ENOMEM;
    memcpy(copy, value, n);
    if (extra_slash)
        copy[n++] = '/';
    copy[n] = '\0';
    free(*slot);
    *slot = copy;
    return 0;
}

/* Validates value for o and stores it in cfg. On error writes a message (without the
 * option's name) into msg. */
static int opt_apply(llmrelay_config_t *cfg, const struct opt *o, const char *value, char *msg, size_t msglen)
{
    void *field = (char *)cfg + o->offset;
    int rc;

    if (value[0] == '\0') {
        snprintf(msg, msglen, "missing value");
        return -EINVAL;
    }
    switch (o->kind) {
    case OPT_STRING:
    case OPT_CONFIG:
        if (has_control_or_space(value, true)) {
            snprintf(msg, msglen, "value contains control characters");
            return -EINVAL;
        }
        return set_string(field, value, 0);
    case OPT_NAME: {
        size_t n = strlen(value);
        bool ok = n <= 64;
        for (size_t i = 0; ok && i < n; i++) {
            char c = value[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                 c == '-';
        }
        if (!ok) {
            snprintf(msg, msglen, "invalid name \"%.*s\" (1..64 characters of A-Z a-z 0-9 . _ -)", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, 0);
    }
    case OPT_ADDR: {
        struct sockaddr_storage ss;
        socklen_t sl;
        if (strlen(value) > 100 || util_parse_hostport(value, &ss, &sl) != 0) {
            snprintf(msg, msglen, "invalid address \"%.*s\" (want IPv4:PORT, [IPv6]:PORT or localhost:PORT)",
                     VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, 0);
    }
    case OPT_HOSTPORTS:
        if (has_control_or_space(value, false) || !list_ok(value, hostport_named_ok)) {
            snprintf(msg, msglen, "invalid list \"%.*s\" (want HOST:PORT[,HOST:PORT...])", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, 0);
    case OPT_URLS:
        if (has_control_or_space(value, false) || !list_ok(value, url_ok)) {
            snprintf(msg, msglen, "invalid URL list \"%.*s\" (want http(s)://HOST:PORT[,...])", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, 0);
    case OPT_PREFIX:
        if (has_control_or_space(value, false)) {
            snprintf(msg, msglen, "invalid prefix \"%.*s\"", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, value[strlen(value) - 1] != '/');
    case OPT_BOOL:
        if (parse_bool(value, field) != 0) {
            snprintf(msg, msglen, "invalid boolean \"%.*s\" (want true or false)", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return 0;
    case OPT_WORKERS: {
        uint64_t n;
        const char *end;
        if (parse_u64_prefix(value, &n, &end) != 0 || *end != '\0' || n > CONFIG_MAX_WORKERS) {
            snprintf(msg, msglen, "invalid worker count \"%.*s\" (want 0..%d, 0 = one per core)", VALUE_SHOWN, value,
                     CONFIG_MAX_WORKERS);
            return -EINVAL;
        }
        *(int *)field = (int)n;
        return 0;
    }
    case OPT_TOKENS: {
        uint64_t n;
        const char *end;
        if (parse_u64_prefix(value, &n, &end) != 0 || *end != '\0' || n < 1 || n > 10000000) {
            snprintf(msg, msglen, "invalid token count \"%.*s\" (want 1..10000000)", VALUE_SHOWN, value);
            return -EINVAL;
        }
        *(int64_t *)field = (int64_t)n;
        return 0;
    }
    case OPT_ATTEMPTS:
    case OPT_THRESHOLD: {
        uint64_t n, max = o->kind == OPT_ATTEMPTS ? CONFIG_MAX_UPSTREAM_ATTEMPTS : CHANNELS_MAX_THRESHOLD;
        const char *end;
        if (parse_u64_prefix(value, &n, &end) != 0 || *end != '\0' || n < 1 || n > max) {
            snprintf(msg, msglen, "invalid %s \"%.*s\" (want 1..%u)",
                     o->kind == OPT_ATTEMPTS ? "attempt count" : "failure threshold", VALUE_SHOWN, value,
                     (unsigned)max);
            return -EINVAL;
        }
        *(unsigned *)field = (unsigned)n;
        return 0;
    }
    case OPT_LOG_LEVEL:
        if (strcmp(value, "debug") != 0 && strcmp(value, "info") != 0 && strcmp(value, "warn") != 0 &&
            strcmp(value, "error") != 0) {
            snprintf(msg, msglen, "invalid log level \"%.*s\" (want debug, info, warn or error)", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return set_string(field, value, 0);
    case OPT_TLS_VERSION:
        if (strcmp(value, "1.3") == 0) {
            *(int *)field = TLS1_3_VERSION;
        } else if (strcmp(value, "1.2") == 0) {
            *(int *)field = TLS1_2_VERSION;
        } else {
            snprintf(msg, msglen, "invalid TLS version \"%.*s\" (want 1.3 or 1.2)", VALUE_SHOWN, value);
            return -EINVAL;
        }
        return 0;
    case OPT_SIZE: {
        uint64_t bytes;
        rc = config_parse_size(value, &bytes);
        if (rc == 0 && (bytes == 0 || bytes > CONFIG_MAX_BODY_LIMIT)) {
            snprintf(msg, msglen, "size \"%.*s\" out of range (1 byte .. 4GiB)", VALUE_SHOWN, value);
            return -ERANGE;
        }
        if (rc != 0) {
            snprintf(msg, msglen, "%s size \"%.*s\" (e.g. 65536, 64KiB, 32MiB, 1GiB)",
                     rc == -ERANGE ? "overflowing" : "invalid", VALUE_SHOWN, value);
            return rc;
        }
        *(uint64_t *)field = bytes;
        return 0;
    }
    case OPT_DURATION: {
        uint64_t ms;
        rc = config_parse_duration(value, &ms);
        if (rc != 0) {
            snprintf(msg, msglen, "%s duration \"%.*s\" (e.g. 500ms, 30s, 15m, 24h, 7d)",
                     rc == -ERANGE ? "overflowing" : "invalid", VALUE_SHOWN, value);
            return rc;
        }
        if (ms == 0 && (o->flags & OPT_NONZERO)) {
            snprintf(msg, msglen, "must be greater than 0");
            return -ERANGE;
        }
        *(uint64_t *)field = ms;
        return 0;
    }
    case OPT_HELP:
    case OPT_VERSION:
        break;
    }
    snprintf(msg, msglen, "takes no value");
    return -EINVAL;
}

/* ---- YAML file ---- */

struct yaml_loader {
    llmrelay_config_t *cfg;
    const char *path;
    yaml_parser_t parser;
    yaml_event_t event;
    bool have_event;
    bool seen[N_OPTIONS];
    char *err;
    size_t errlen;
};

static size_t event_line(const yaml_event_t *ev)
{
    return ev->start_mark.line + 1;
}

/* Next event into l->event (the previous one is released). */
static int yaml_next(struct yaml_loader *l)
{
    if (l->have_event) {
        yaml_event_delete(&l->event);
        l->have_event = false;
    }
    if (!yaml_parser_parse(&l->parser, &l->event)) {
        snprintf(l->err, l->errlen, "%s:%zu: invalid YAML: %s", l->path, (size_t)l->parser.problem_mark.line + 1,
                 l->parser.problem ? l->parser.problem : "parse error");
        return -EINVAL;
    }
    l->have_event = true;
    if (l->event.type == YAML_ALIAS_EVENT) {
        snprintf(l->err, l->errlen, "%s:%zu: YAML aliases are not supported", l->path, event_line(&l->event));
        return -EINVAL;
    }
    return 0;
}

static bool scalar_is_null(const yaml_event_t *ev)
{
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *v = (const char *)ev->data.scalar.value;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

/* Reads the value event(s) following a key into a new string (sequences joined by ','). */
static int yaml_read_value(struct yaml_loader *l, const struct opt *o, const char *key, size_t key_line, char **out,
                           size_t *line)
{
    int rc = yaml_next(l);
    if (rc != 0)
        return rc;
    *line = event_line(&l->event);
    if (l->event.type == YAML_SCALAR_EVENT) {
        if (scalar_is_null(&l->event)) { /* an empty value's mark may be on the next line */
            snprintf(l->err, l->errlen, "%s:%zu: %s: missing value", l->path, key_line, key);
            return -EINVAL;
        }
        *out = strdup((const char *)l->event.data.scalar.value);
        return *out ? 0 : -ENOMEM;
    }
    if (l->event.type != YAML_SEQUENCE_START_EVENT || !(o->flags & OPT_LIST)) {
        snprintf(l->err, l->errlen, "%s:%zu: %s: expected a single value", l->path, *line, key);
        return -EINVAL;
    }
    size_t cap = 256, used = 0;
    char *joined = malloc(cap);
    if (joined == NULL)
        return -ENOMEM;
    joined[0] = '\0';
    for (;;) {
        if ((rc = yaml_next(l)) != 0)
            break;
        if (l->event.type == YAML_SEQUENCE_END_EVENT) {
            if (used == 0) {
                snprintf(l->err, l->errlen, "%s:%zu: %s: empty list", l->path, *line, key);
                rc = -EINVAL;
            }
            break;
        }
        if (l->event.type != YAML_SCALAR_EVENT) {
            snprintf(l->err, l->errlen, "%s:%zu: %s: list items must be strings", l->path, event_line(&l->event), key);
            rc = -EINVAL;
            break;
        }
        const char *item = (const char *)l->event.data.scalar.value;
        size_t n = strlen(item);
        if (used + n + 2 > CONFIG_MAX_FILE_SIZE) {
            rc = -E2BIG;
            break;
        }
        if (used + n + 2 > cap) {
            while (used + n + 2 > cap)
                cap *= 2;
            char *grown = realloc(joined, cap);
            if (grown == NULL) {
                rc = -ENOMEM;
                break;
            }
            joined = grown;
        }
        if (used > 0)
            joined[used++] = ',';
        memcpy(joined + used, item, n + 1);
        used += n;
    }
    if (rc != 0) {
        free(joined);
        return rc;
    }
    *out = joined;
    return 0;
}

static int yaml_load_mapping(struct yaml_loader *l)
{
    int rc;
    for (;;) {
        if ((rc = yaml_next(l)) != 0)
            return rc;
        if (l->event.type == YAML_MAPPING_END_EVENT)
            return 0;
        if (l->event.type != YAML_SCALAR_EVENT) {
            snprintf(l->err, l->errlen, "%s:%zu: expected a setting name", l->path, event_line(&l->event));
            return -EINVAL;
        }
        size_t key_line = event_line(&l->event);
        char key[64];
        const char *raw = (const char *)l->event.data.scalar.value;
        size_t n = strlen(raw);
        if (n >= sizeof(key)) {
            snprintf(l->err, l->errlen, "%s:%zu: unknown setting \"%.*s\"", l->path, key_line, VALUE_SHOWN, raw);
            return -EINVAL;
        }
        for (size_t i = 0; i <= n; i++)
            key[i] = raw[i] == '_' ? '-' : raw[i];
        const struct opt *o = opt_find(key, n);
        if (o == NULL || o->kind >= OPT_CONFIG) {
            snprintf(l->err, l->errlen, "%s:%zu: unknown setting \"%s\"%s", l->path, key_line, raw,
                     o ? " (command line only)" : "");
            return -EINVAL;
        }
        size_t idx = (size_t)(o - options);
        if (l->seen[idx]) {
            snprintf(l->err, l->errlen, "%s:%zu: %s: given twice", l->path, key_line, o->name);
            return -EINVAL;
        }
        l->seen[idx] = true;

        char *value = NULL;
        size_t value_line = key_line;
        if ((rc = yaml_read_value(l, o, o->name, key_line, &value, &value_line)) != 0)
            return rc;
        char msg[200];
        rc = opt_apply(l->cfg, o, value, msg, sizeof(msg));
        free(value);
        if (rc != 0) {
            snprintf(l->err, l->errlen, "%s:%zu: %s: %s", l->path, value_line, o->name, msg);
            return rc;
        }
    }
}

static int yaml_load(llmrelay_config_t *cfg, const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    size_t len = 0;
    int rc = util_read_file(path, CONFIG_MAX_FILE_SIZE, &text, &len);
    if (rc != 0) {
        snprintf(err, errlen, "--config: cannot read \"%.*s\": %s", 200, path,
                 rc == -EFBIG ? "larger than 1 MiB" : strerror(-rc));
        return rc;
    }

    struct yaml_loader *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        free(text);
        return -ENOMEM;
    }
    l->cfg = cfg;
    l->path = path;
    l->err = err;
    l->errlen = errlen;
    if (!yaml_parser_initialize(&l->parser)) {
        free(l);
        free(text);
        return -ENOMEM;
    }
    yaml_parser_set_input_string(&l->parser, (const unsigned char *)text, len);

    /* stream-start, then nothing (empty file) or one document holding one mapping. */
    if ((rc = yaml_next(l)) != 0 || (rc = yaml_next(l)) != 0)
        goto done;
    if (l->event.type == YAML_STREAM_END_EVENT)
        goto done;
    if ((rc = yaml_next(l)) != 0) /* past document-start */
        goto done;
    if (l->event.type == YAML_SCALAR_EVENT && scalar_is_null(&l->event)) {
        /* "---" alone: an empty document */
    } else if (l->event.type == YAML_MAPPING_START_EVENT) {
        if ((rc = yaml_load_mapping(l)) != 0)
            goto done;
    } else {
        snprintf(err, errlen, "%s:%zu: the file must be a mapping of settings (name: value)", path,
                 event_line(&l->event));
        rc = -EINVAL;
        goto done;
    }
    if ((rc = yaml_next(l)) != 0 || (rc = yaml_next(l)) != 0) /* document-end, stream-end */
        goto done;
    if (l->event.type != YAML_STREAM_END_EVENT) {
        snprintf(err, errlen, "%s:%zu: only one YAML document is allowed", path, event_line(&l->event));
        rc = -EINVAL;
    }

done:
    if (l->have_event)
        yaml_event_delete(&l->event);
    yaml_parser_delete(&l->parser);
    free(l);
    free(text);
    return rc;
}

/* ---- command line ---- */

struct arg_pair {
    const struct opt *opt;
    const char *value; /* points into argv, or a literal */
};

/* Splits argv into (option, value) pairs. Returns 0, or a negative error with err set. */
static int tokenise(int argc, char **argv, struct arg_pair *pairs, size_t *npairs, char *err, size_t errlen)
{
    size_t n = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0)
            arg = "--help";
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            snprintf(err, errlen, "unexpected argument \"%.*s\" (flags start with --; see --help)", VALUE_SHOWN, arg);
            return -EINVAL;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = opt_find(name, name_len);
        if (o == NULL) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)",
                     (int)(name_len > VALUE_SHOWN ? VALUE_SHOWN : name_len), name);
            return -EINVAL;
        }
        const char *value;
        if (o->kind == OPT_HELP || o->kind == OPT_VERSION) {
            if (eq) {
                snprintf(err, errlen, "--%s takes no value", o->name);
                return -EINVAL;
            }
            value = "";
        } else if (eq) {
            value = eq + 1;
            if (*value == '\0') {
                snprintf(err, errlen, "--%s: missing value", o->name);
                return -EINVAL;
            }
        } else if (o->kind == OPT_BOOL) {
            value = "true";
        } else {
            /* The next word is the value, unless it is missing or is itself a flag (a value
             * starting with "--" is surely a forgotten value). */
            if (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0) {
                snprintf(err, errlen, "--%s: missing value (--%s %s)", o->name, o->name, o->metavar);
                return -EINVAL;
            }
            value = argv[++i];
        }
        pairs[n].opt = o;
        pairs[n].value = value;
        n++;
    }
    *npairs = n;
    return 0;
}

static int apply_defaults(llmrelay_config_t *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].def == NULL)
            continue;
        char msg[200];
        int rc = opt_apply(cfg, &options[i], options[i].def, msg, sizeof(msg));
        if (rc != 0) { /* only -ENOMEM in practice: the defaults are valid */
            snprintf(err, errlen, "--%s: default: %s", options[i].name, msg);
            return rc;
        }
    }
    return 0;
}

/* Fills in what the machine decides and checks settings that go together. */
static int finish(llmrelay_config_t *cfg, char *err, size_t errlen)
{
    if (cfg->name == NULL) {
        char host[256] = {0};
        char msg[200];
        if (gethostname(host, sizeof(host) - 1) != 0 ||
            opt_apply(cfg, opt_find("name", 4), host, msg, sizeof(msg)) != 0) {
            snprintf(err, errlen, "--name: the host name \"%.*s\" is not a usable node name; give --name", VALUE_SHOWN,
                     host);
            return -EINVAL;
        }
    }
    if (cfg->workers == 0) {
        unsigned n = uv_available_parallelism();
        cfg->workers = n < 1 ? 1 : n > CONFIG_MAX_WORKERS ? CONFIG_MAX_WORKERS : (int)n;
    }
    /* The breaker's derived bounds (channels.h): reopen back-off capped at 5 min, or at the
     * cool-down itself when that is longer; a probe without a verdict frees its slot. */
    cfg->breaker.cooldown_max_ms = cfg->breaker.cooldown_ms > CONFIG_BREAKER_COOLDOWN_MAX_MS
                                       ? cfg->breaker.cooldown_ms
                                       : CONFIG_BREAKER_COOLDOWN_MAX_MS;
    cfg->breaker.probe_timeout_ms = CONFIG_BREAKER_PROBE_TIMEOUT_MS;
    if ((cfg->peer_tls_cert == NULL) != (cfg->peer_tls_key == NULL)) {
        snprintf(err, errlen, "%s: needs %s too", cfg->peer_tls_cert ? "--peer-tls-cert" : "--peer-tls-key",
                 cfg->peer_tls_cert ? "--peer-tls-key" : "--peer-tls-cert");
        return -EINVAL;
    }
    if ((cfg->tls_cert == NULL) != (cfg->tls_key == NULL)) {
        snprintf(err, errlen, "%s: needs %s too", cfg->tls_cert ? "--tls-cert" : "--tls-key",
                 cfg->tls_cert ? "--tls-key" : "--tls-cert");
        return -EINVAL;
    }
    return 0;
}

int config_parse(llmrelay_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    if (errlen > 0)
        err[0] = '\0';

    struct arg_pair *pairs = calloc(argc > 0 ? (size_t)argc : 1, sizeof(*pairs));
    if (pairs == NULL) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    size_t npairs = 0;
    int rc = tokenise(argc, argv, pairs, &npairs, err, errlen);
    if (rc != 0)
        goto out;

    const char *config_path = NULL;
    for (size_t i = 0; i < npairs; i++) {
        if (pairs[i].opt->kind == OPT_HELP) {
            config_print_usage(stdout);
            rc = 1;
            goto out;
        }
        if (pairs[i].opt->kind == OPT_VERSION) {
            printf("llmrelay %s\n", LLMRELAY_VERSION);
            rc = 1;
            goto out;
        }
        if (pairs[i].opt->kind == OPT_CONFIG) {
            if (config_path != NULL) {
                snprintf(err, errlen, "--config: given twice");
                rc = -EINVAL;
                goto out;
            }
            config_path = pairs[i].value;
        }
    }

    if ((rc = apply_defaults(cfg, err, errlen)) != 0)
        goto out;
    if (config_path != NULL) {
        char msg[200];
        if ((rc = opt_apply(cfg, opt_find("config", 6), config_path, msg, sizeof(msg))) != 0) {
            snprintf(err, errlen, "--config: %s", msg);
            goto out;
        }
        if ((rc = yaml_load(cfg, config_path, err, errlen)) != 0)
            goto out;
    }
    for (size_t i = 0; i < npairs; i++) {
        const struct opt *o = pairs[i].opt;
        if (o->kind == OPT_CONFIG)
            continue;
        char msg[200];
        if ((rc = opt_apply(cfg, o, pairs[i].value, msg, sizeof(msg))) != 0) {
            snprintf(err, errlen, "--%s: %s", o->name, msg);
            goto out;
        }
    }
    rc = finish(cfg, err, errlen);

out:
    free(pairs);
    if (rc != 0)
        config_dispose(cfg);
    if (rc == -ENOMEM && errlen > 0 && err[0] == '\0')
        snprintf(err, errlen, "out of memory");
    return rc;
}

void config_dispose(llmrelay_config_t *cfg)
{
    for (size_t i = 0; i < N_OPTIONS; i++) {
        enum opt_kind k = options[i].kind;
        bool is_string = k == OPT_STRING || k == OPT_NAME || k == OPT_ADDR || k == OPT_HOSTPORTS || k == OPT_URLS ||
                         k == OPT_PREFIX || k == OPT_LOG_LEVEL || k == OPT_CONFIG;
        if (is_string) {
            char **slot = (char **)((char *)cfg + options[i].offset);
            free(*slot);
        }
    }
    memset(cfg, 0, sizeof(*cfg));
}

void config_print_usage(FILE *f)
{
    fprintf(f, "usage: llmrelay [--config FILE] [flags]\n\n"
               "Clustered AI API relay node. Every flag may also be set in the --config YAML file\n"
               "under the same name without the dashes (flags on the command line win).\n\n");
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const struct opt *o = &options[i];
        char left[64];
        snprintf(left, sizeof(left), "--%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        fprintf(f, "  %-38s %s", left, o->help);
        if (o->def != NULL)
            fprintf(f, " (default: %s)", o->def);
        else if (o->def == NULL && o->kind != OPT_HELP && o->kind != OPT_VERSION && o->kind != OPT_NAME &&
                 o->kind != OPT_CONFIG)
            fprintf(f, " (default: none)");
        fputc('\n', f);
    }
    fprintf(f, "\nDUR: integer + ms|s|m|h|d (500ms, 30s, 15m, 24h, 7d; 0 alone). SIZE: integer bytes, or with\n"
               "KiB|MiB|GiB|TiB (= K|M|G|T, powers of 1024) or KB|MB|GB|TB (powers of 1000), e.g. 32MiB.\n");
}
