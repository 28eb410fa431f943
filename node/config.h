/* config.h — the llmrelay daemon's settings, from command-line flags and an optional YAML
 * file (--config FILE).
 *
 * Precedence: built-in defaults < the YAML file < flags on the command line (wherever
 * --config appears among them; a flag given twice: the last one wins). The YAML file is one
 * mapping whose keys are the flag names without the dashes ("listen", "tls-self-signed";
 * "tls_self_signed" is accepted too); "join" and "etcd" may also be sequences of strings.
 *
 * Value syntax:
 *   DUR   integer + unit: ms, s, m, h, d ("500ms", "30s", "15m", "24h", "7d"); "0" alone.
 *   SIZE  integer + optional unit (case-insensitive): none or B = bytes; KiB MiB GiB TiB and
 *         K M G T = powers of 1024; KB MB GB TB = powers of 1000. "32MiB" == "32M".
 *   BOOL  (tls-self-signed) true/false, yes/no, on/off, 1/0; on the command line the bare
 *         flag means true, and only "--tls-self-signed=VALUE" takes a value.
 * Overflowing, negative, fractional or unit-less (except 0 / bytes) values are errors.
 *
 * Ownership: every char * in llmrelay_config_t is NULL or a malloc'd NUL-terminated string
 * owned by the struct; config_dispose frees them all. Optional settings without a default
 * (tls_cert, tls_key, listen_plain, admin_token_file, gossip, advertise, join, peer_listen,
 * cluster_key_file, secrets_key_file, upstream_ca_file, config_file) are NULL when unset.
 * Nothing here reads the files named by the settings; the modules using them do. */
#ifndef LLMRELAY_NODE_CONFIG_H
#define LLMRELAY_NODE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "node/channels.h"

#ifndef LLMRELAY_VERSION
#define LLMRELAY_VERSION "0.0.0-dev"
#endif

#define CONFIG_MAX_WORKERS 256
#define CONFIG_MAX_FILE_SIZE (1024 * 1024)             /* a --config file larger than this is refused */
#define CONFIG_MAX_BODY_LIMIT (4ULL << 30)             /* --max-body may not exceed 4 GiB (kept in memory) */
#define CONFIG_MAX_UPSTREAM_ATTEMPTS 10                /* --upstream-max-attempts: 1..10 */
#define CONFIG_BREAKER_COOLDOWN_MAX_MS (300ULL * 1000) /* cooldown_max = max(this, --breaker-cooldown) */
#define CONFIG_BREAKER_PROBE_TIMEOUT_MS (120ULL * 1000)

typedef struct llmrelay_config {
    char *name;                              /* default: the host name; [A-Za-z0-9._-], 1..64 chars */
    char *region;                            /* default "default"; same charset */
    char *listen;                            /* default "0.0.0.0:8443" (TLS) */
    char *tls_cert;                          /* PEM chain; given together with tls_key */
    char *tls_key;                           /* PEM private key */
    char *listen_plain;                      /* cleartext client listener; NULL = none */
    char *admin_listen;                      /* default "127.0.0.1:9090" */
    char *admin_token_file;                  /* bootstrap admin token (text, trailing newline ignored) */
    char *etcd;                              /* comma-separated http(s) URLs; default "http://127.0.0.1:2379" */
    char *etcd_prefix;                       /* default "/llmrelay/"; always ends with '/' */
    char *gossip;                            /* UDP ADDR:PORT for SWIM */
    char *advertise;                         /* address announced to peers */
    char *join;                              /* comma-separated HOST:PORT seeds */
    char *peer_listen;                       /* peer RPC ADDR:PORT */
    char *cluster_key_file;                  /* base64 of 32 random bytes */
    char *peer_tls_cert, *peer_tls_key;      /* peer RPC certificate (NULL: a throw-away one) */
    char *peer_ca_file;                      /* peers' certificates must chain to these (NULL: not checked) */
    char *data_dir;                          /* default "./llmrelay-data" */
    char *log_level;                         /* "debug" | "info" | "warn" | "error"; default "info" */
    char *secrets_key_file;                  /* key encrypting upstream API keys in etcd */
    char *upstream_ca_file;                  /* extra CAs for upstream TLS */
    char *config_file;                       /* the --config path, NULL when none */
    bool tls_self_signed;                    /* dev: generate a throw-away certificate */
    int workers;                             /* resolved, 1..CONFIG_MAX_WORKERS (--workers 0 = one per core) */
    int tls_min_version;                     /* TLS1_3_VERSION (default) or TLS1_2_VERSION */
    uint64_t max_body;                       /* bytes; default 32 MiB; 1..CONFIG_MAX_BODY_LIMIT */
    uint64_t usage_drain_timeout_ms;         /* default 30 s; 0 = do not drain */
    uint64_t shutdown_timeout_ms;            /* default 60 s */
    uint64_t retention_ms;                   /* default 7 d; > 0 */
    uint64_t upstream_connect_timeout_ms;    /* default 10 s; > 0 */
    uint64_t upstream_first_byte_timeout_ms; /* default 600 s; > 0 */
    uint64_t upstream_idle_timeout_ms;       /* default 300 s; > 0 */
    int64_t default_max_output_tokens;       /* default 4096: the output bound the relay sets upstream
                                                when a request gives none, so its reservation holds */
    /* Channel failover (node/channels.h). retry_policy: --upstream-max-attempts (default 3,
     * 1..10), --upstream-retry-budget (default 30 s, > 0). breaker: --breaker-threshold
     * (default 5, 1..CHANNELS_MAX_THRESHOLD), --breaker-window (30 s), --breaker-cooldown
     * (30 s), all > 0; cooldown_max_ms = max(300 s, cooldown_ms), probe_timeout_ms = 120 s. */
    channels_retry_policy_t retry_policy;
    channels_breaker_config_t breaker;
} llmrelay_config_t;

/* Fills *cfg (which need not be initialised) from defaults, the --config file and argv.
 * Returns 0 when the node should run; 1 when --version or --help was printed to stdout (exit
 * 0); a negative errno-style value on error, with a one-line message naming the flag (and
 * "FILE:LINE:" for file errors) in err (exit 2). On any non-zero return cfg holds nothing to
 * free (config_dispose is still safe). argv is only read. */
int config_parse(llmrelay_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* Frees every string of cfg and zeroes it. Safe on a zeroed or already-disposed struct. */
void config_dispose(llmrelay_config_t *cfg);

/* DUR → milliseconds. Returns 0 or -EINVAL (bad syntax) / -ERANGE (overflow). */
int config_parse_duration(const char *s, uint64_t *ms);

/* SIZE → bytes. Returns 0 or -EINVAL (bad syntax) / -ERANGE (overflow). */
int config_parse_size(const char *s, uint64_t *bytes);

/* Writes the --help text (every flag with its default) to f. */
void config_print_usage(FILE *f);

#endif
