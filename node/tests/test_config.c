/* test_config.c — unit tests of node/config: every flag in both "--flag value" and
 * "--flag=value" forms, every default, the YAML file and its precedence, durations and
 * sizes, and that each error names the flag (or FILE:LINE). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "node/config.h"

#define MAX_ARGS 128

static char tmpdir[64];
static char err[512];

/* Runs config_parse on "llmrelay" + the NULL-terminated argument list. */
static int parse_v(llmrelay_config_t *cfg, va_list ap)
{
    char *argv[MAX_ARGS];
    int argc = 0;
    argv[argc++] = "llmrelay";
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) {
        assert_true(argc < MAX_ARGS);
        argv[argc++] = (char *)a;
    }
    argv[argc] = NULL;
    return config_parse(cfg, argc, argv, err, sizeof(err));
}

static int parse(llmrelay_config_t *cfg, ...)
{
    va_list ap;
    va_start(ap, cfg);
    int rc = parse_v(cfg, ap);
    va_end(ap);
    return rc;
}

/* Expects the parse to fail with a message containing every non-NULL needle. */
static void expect_error(const char *needle1, const char *needle2, ...)
{
    llmrelay_config_t cfg;
    va_list ap;
    va_start(ap, needle2);
    int rc = parse_v(&cfg, ap);
    va_end(ap);
    if (rc >= 0)
        fail_msg("parse succeeded, expected an error containing \"%s\"", needle1);
    if (strstr(err, needle1) == NULL || (needle2 && strstr(err, needle2) == NULL))
        fail_msg("error \"%s\" lacks \"%s\"%s%s", err, needle1, needle2 ? " / " : "", needle2 ? needle2 : "");
    assert_null(cfg.listen); /* nothing left to free */
    config_dispose(&cfg);
}

static void write_file(const char *name, const char *text, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int expected_workers(void)
{
    unsigned n = uv_available_parallelism();
    return n < 1 ? 1 : n > 256 ? 256 : (int)n;
}

static void test_defaults(void **state)
{
    (void)state;
    llmrelay_config_t cfg;
    assert_int_equal(parse(&cfg, NULL), 0);
    char host[256] = {0};
    assert_int_equal(gethostname(host, sizeof(host) - 1), 0);
    assert_string_equal(cfg.name, host);
    assert_string_equal(cfg.region, "default");
    assert_string_equal(cfg.listen, "0.0.0.0:8443");
    assert_null(cfg.tls_cert);
    assert_null(cfg.tls_key);
    assert_false(cfg.tls_self_signed);
    assert_null(cfg.listen_plain);
    assert_string_equal(cfg.admin_listen, "127.0.0.1:9090");
    assert_null(cfg.admin_token_file);
    assert_string_equal(cfg.etcd, "http://127.0.0.1:2379");
    assert_string_equal(cfg.etcd_prefix, "/llmrelay/");
    assert_null(cfg.gossip);
    assert_null(cfg.advertise);
    assert_null(cfg.join);
    assert_null(cfg.peer_listen);
    assert_null(cfg.cluster_key_file);
    assert_string_equal(cfg.data_dir, "./llmrelay-data");
    assert_int_equal(cfg.workers, expected_workers());
    assert_string_equal(cfg.log_level, "info");
    assert_int_equal(cfg.tls_min_version, TLS1_3_VERSION);
    assert_int_equal(cfg.max_body, 32ULL << 20);
    assert_int_equal(cfg.usage_drain_timeout_ms, 30000);
    assert_int_equal(cfg.default_max_output_tokens, 4096);
    assert_int_equal(cfg.shutdown_timeout_ms, 60000);
    assert_int_equal(cfg.retention_ms, 7ULL * 86400 * 1000);
    assert_null(cfg.secrets_key_file);
    assert_null(cfg.upstream_ca_file);
    assert_int_equal(cfg.upstream_connect_timeout_ms, 10000);
    assert_int_equal(cfg.upstream_first_byte_timeout_ms, 600000);
    assert_int_equal(cfg.upstream_idle_timeout_ms, 300000);
    assert_null(cfg.config_file);
    config_dispose(&cfg);
    config_dispose(&cfg); /* idempotent */
}

/* Every settable flag with a non-default value; each entry is "name", "value". */
static const char *const all_flags[][2] = {
    {"name", "node-1"},
    {"region", "eu-west"},
    {"listen", "127.0.0.1:18443"},
    {"tls-cert", "/etc/llmrelay/cert.pem"},
    {"tls-key", "/etc/llmrelay/key.pem"},
    {"listen-plain", "127.0.0.1:18080"},
    {"admin-listen", "[::1]:19090"},
    {"admin-token-file", "/run/admin token"},
    {"etcd", "http://10.0.0.1:2379,https://10.0.0.2:2379"},
    {"etcd-prefix", "/test/relay"},
    {"gossip", "127.0.0.2:7946"},
    {"advertise", "10.0.0.5"},
    {"join", "node2.example:7946,[::1]:7947,127.0.0.3:7948"},
    {"peer-listen", "127.0.0.2:7947"},
    {"cluster-key-file", "cluster.key"},
    {"data-dir", "/var/lib/llmrelay"},
    {"workers", "3"},
    {"log-level", "debug"},
    {"tls-min-version", "1.2"},
    {"max-body", "64KiB"},
    {"usage-drain-timeout", "500ms"},
    {"shutdown-timeout", "15m"},
    {"retention", "24h"},
    {"secrets-key-file", "secrets.key"},
    {"upstream-ca-file", "ca.pem"},
    {"upstream-connect-timeout", "2s"},
    {"upstream-first-byte-timeout", "1m"},
    {"upstream-idle-timeout", "45s"},
};
#define N_ALL (sizeof(all_flags) / sizeof(all_flags[0]))

static void check_all_flags(const llmrelay_config_t *cfg)
{
    assert_string_equal(cfg->name, "node-1");
    assert_string_equal(cfg->region, "eu-west");
    assert_string_equal(cfg->listen, "127.0.0.1:18443");
    assert_string_equal(cfg->tls_cert, "/etc/llmrelay/cert.pem");
    assert_string_equal(cfg->tls_key, "/etc/llmrelay/key.pem");
    assert_string_equal(cfg->listen_plain, "127.0.0.1:18080");
    assert_string_equal(cfg->admin_listen, "[::1]:19090");
    assert_string_equal(cfg->admin_token_file, "/run/admin token");
    assert_string_equal(cfg->etcd, "http://10.0.0.1:2379,https://10.0.0.2:2379");
    assert_string_equal(cfg->etcd_prefix, "/test/relay/");
    assert_string_equal(cfg->gossip, "127.0.0.2:7946");
    assert_string_equal(cfg->advertise, "10.0.0.5");
    assert_string_equal(cfg->join, "node2.example:7946,[::1]:7947,127.0.0.3:7948");
    assert_string_equal(cfg->peer_listen, "127.0.0.2:7947");
    assert_string_equal(cfg->cluster_key_file, "cluster.key");
    assert_string_equal(cfg->data_dir, "/var/lib/llmrelay");
    assert_int_equal(cfg->workers, 3);
    assert_string_equal(cfg->log_level, "debug");
    assert_int_equal(cfg->tls_min_version, TLS1_2_VERSION);
    assert_int_equal(cfg->max_body, 65536);
    assert_int_equal(cfg->usage_drain_timeout_ms, 500);
    assert_int_equal(cfg->shutdown_timeout_ms, 15 * 60000);
    assert_int_equal(cfg->retention_ms, 24 * 3600000ULL);
    assert_string_equal(cfg->secrets_key_file, "secrets.key");
    assert_string_equal(cfg->upstream_ca_file, "ca.pem");
    assert_int_equal(cfg->upstream_connect_timeout_ms, 2000);
    assert_int_equal(cfg->upstream_first_byte_timeout_ms, 60000);
    assert_int_equal(cfg->upstream_idle_timeout_ms, 45000);
}

static int parse_array(llmrelay_config_t *cfg, int argc, char **argv)
{
    return config_parse(cfg, argc, argv, err, sizeof(err));
}

static void test_every_flag_separate_value(void **state)
{
    (void)state;
    char *argv[2 * N_ALL + 2];
    int argc = 0;
    char names[N_ALL][64];
    argv[argc++] = "llmrelay";
    for (size_t i = 0; i < N_ALL; i++) {
        snprintf(names[i], sizeof(names[i]), "--%s", all_flags[i][0]);
        argv[argc++] = names[i];
        argv[argc++] = (char *)all_flags[i][1];
    }
    argv[argc++] = "--tls-self-signed";
    llmrelay_config_t cfg;
    if (parse_array(&cfg, argc, argv) != 0)
        fail_msg("%s", err);
    check_all_flags(&cfg);
    assert_true(cfg.tls_self_signed);
    config_dispose(&cfg);
}

static void test_every_flag_equals_value(void **state)
{
    (void)state;
    char *argv[N_ALL + 2];
    int argc = 0;
    char words[N_ALL][160];
    argv[argc++] = "llmrelay";
    for (size_t i = 0; i < N_ALL; i++) {
        snprintf(words[i], sizeof(words[i]), "--%s=%s", all_flags[i][0], all_flags[i][1]);
        argv[argc++] = words[i];
    }
    argv[argc++] = "--tls-self-signed=true";
    llmrelay_config_t cfg;
    if (parse_array(&cfg, argc, argv) != 0)
        fail_msg("%s", err);
    check_all_flags(&cfg);
    assert_true(cfg.tls_self_signed);
    config_dispose(&cfg);
}

static void test_bool_and_misc_values(void **state)
{
    (void)state;
    llmrelay_config_t cfg;
    assert_int_equal(parse(&cfg, "--tls-self-signed", "--tls-self-signed=false", NULL), 0);
    assert_false(cfg.tls_self_signed);
    config_dispose(&cfg);
    assert_int_equal(parse(&cfg, "--tls-self-signed=yes", NULL), 0);
    assert_true(cfg.tls_self_signed);
    config_dispose(&cfg);
    assert_int_equal(parse(&cfg, "--tls-self-signed=0", NULL), 0);
    assert_false(cfg.tls_self_signed);
    config_dispose(&cfg);

    /* Last one wins; etcd-prefix keeps an existing slash; workers bounds; localhost. */
    assert_int_equal(parse(&cfg, "--region", "a", "--region=b", "--etcd-prefix", "/x/", "--workers", "256", "--listen",
                           "localhost:8443", "--tls-min-version", "1.3", "--log-level", "error", "--max-body", "4GiB",
                           "--usage-drain-timeout", "0", "--shutdown-timeout", "0s", NULL),
                     0);
    assert_string_equal(cfg.region, "b");
    assert_string_equal(cfg.etcd_prefix, "/x/");
    assert_int_equal(cfg.workers, 256);
    assert_int_equal(cfg.tls_min_version, TLS1_3_VERSION);
    assert_int_equal(cfg.max_body, 4ULL << 30);
    assert_int_equal(cfg.usage_drain_timeout_ms, 0);
    assert_int_equal(cfg.shutdown_timeout_ms, 0);
    config_dispose(&cfg);

    assert_int_equal(parse(&cfg, "--etcd-prefix=relay", "--workers", "0", "--log-level=warn", NULL), 0);
    assert_string_equal(cfg.etcd_prefix, "relay/");
    assert_int_equal(cfg.workers, expected_workers());
    config_dispose(&cfg);

    assert_int_equal(parse(&cfg, "--etcd-prefix", "/", NULL), 0);
    assert_string_equal(cfg.etcd_prefix, "/");
    config_dispose(&cfg);
}

/* Captures what fn prints on stdout. */
static void capture_stdout(const char *arg, char *out, size_t outcap)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/stdout", tmpdir);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(saved >= 0 && fd >= 0);
    dup2(fd, STDOUT_FILENO);
    close(fd);
    llmrelay_config_t cfg;
    int rc = parse(&cfg, "--log-level", "bogus-ignored-by-help", arg, NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    assert_int_equal(rc, 1);
    assert_null(cfg.listen);
    config_dispose(&cfg);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(out, 1, outcap - 1, f);
    out[n] = '\0';
    fclose(f);
}

static void test_version_and_help(void **state)
{
    (void)state;
    static char out[16384];
    capture_stdout("--version", out, sizeof(out));
    assert_string_equal(out, "llmrelay " LLMRELAY_VERSION "\n");

    capture_stdout("--help", out, sizeof(out));
    for (size_t i = 0; i < N_ALL; i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s ", all_flags[i][0]);
        if (strstr(out, flag) == NULL)
            fail_msg("help lacks %s", flag);
    }
    const char *more[] = {
        "--tls-self-signed",         "--config FILE",    "--version",     "--help",          "(default: 0.0.0.0:8443)",
        "(default: 127.0.0.1:9090)", "(default: 32MiB)", "(default: 7d)", "(default: 600s)", "(default: /llmrelay/)",
        "(default: info)",           "(default: 1.3)"};
    for (size_t i = 0; i < sizeof(more) / sizeof(more[0]); i++) {
        if (strstr(out, more[i]) == NULL)
            fail_msg("help lacks %s", more[i]);
    }
    capture_stdout("-h", out, sizeof(out));
    assert_non_null(strstr(out, "usage: llmrelay"));
}

static void test_yaml_file(void **state)
{
    (void)state;
    char path[128], yaml[4096];
    size_t off = 0;
    off += (size_t)snprintf(yaml + off, sizeof(yaml) - off, "# llmrelay node\n");
    for (size_t i = 0; i < N_ALL; i++) {
        /* Alternate dash and underscore spellings, quoted and plain values. */
        char key[64];
        snprintf(key, sizeof(key), "%s", all_flags[i][0]);
        if (i % 2)
            for (char *p = key; *p; p++)
                if (*p == '-')
                    *p = '_';
        off +=
            (size_t)snprintf(yaml + off, sizeof(yaml) - off, i % 3 ? "%s: %s\n" : "%s: \"%s\"\n", key, all_flags[i][1]);
    }
    off += (size_t)snprintf(yaml + off, sizeof(yaml) - off, "tls_self_signed: true\n");
    write_file("all.yaml", yaml, path, sizeof(path));

    llmrelay_config_t cfg;
    if (parse(&cfg, "--config", path, NULL) != 0)
        fail_msg("%s", err);
    check_all_flags(&cfg);
    assert_true(cfg.tls_self_signed);
    assert_string_equal(cfg.config_file, path);
    config_dispose(&cfg);
}

static void test_yaml_precedence(void **state)
{
    (void)state;
    char path[128];
    write_file("prec.yaml",
               "listen: 0.0.0.0:8443\n"
               "tls-self-signed: true\n"
               "workers: 2\n"
               "region: from-file\n"
               "max-body: 1MiB\n"
               "join:\n"
               "  - 127.0.0.1:7946\n"
               "  - node2:7946\n"
               "etcd: [http://127.0.0.1:2379, http://127.0.0.1:22379]\n",
               path, sizeof(path));
    char eq[160];
    snprintf(eq, sizeof(eq), "--config=%s", path);

    llmrelay_config_t cfg;
    /* --config first: flags after it win. */
    assert_int_equal(parse(&cfg, eq, "--workers", "4", "--tls-self-signed=false", NULL), 0);
    assert_int_equal(cfg.workers, 4);
    assert_false(cfg.tls_self_signed);
    assert_string_equal(cfg.region, "from-file");
    assert_string_equal(cfg.listen, "0.0.0.0:8443");
    assert_int_equal(cfg.max_body, 1 << 20);
    assert_string_equal(cfg.join, "127.0.0.1:7946,node2:7946");
    assert_string_equal(cfg.etcd, "http://127.0.0.1:2379,http://127.0.0.1:22379");
    config_dispose(&cfg);

    /* --config last: flags before it still win. */
    assert_int_equal(parse(&cfg, "--region", "from-flag", "--max-body=2MiB", "--config", path, NULL), 0);
    assert_string_equal(cfg.region, "from-flag");
    assert_int_equal(cfg.max_body, 2 << 20);
    assert_int_equal(cfg.workers, 2);
    assert_true(cfg.tls_self_signed);
    config_dispose(&cfg);

    /* Empty files and a bare "---" document mean defaults. */
    write_file("empty.yaml", "", path, sizeof(path));
    assert_int_equal(parse(&cfg, "--config", path, NULL), 0);
    assert_string_equal(cfg.listen, "0.0.0.0:8443");
    config_dispose(&cfg);
    write_file("comments.yaml", "# nothing\n---\n...\n", path, sizeof(path));
    assert_int_equal(parse(&cfg, "--config", path, NULL), 0);
    config_dispose(&cfg);
}

static void test_flag_errors(void **state)
{
    (void)state;
    expect_error("unknown flag --bogus", NULL, "--bogus", "1", NULL);
    expect_error("unknown flag --listenx", NULL, "--listenx=1", NULL);
    expect_error("unexpected argument \"stray\"", NULL, "stray", NULL);
    expect_error("unexpected argument \"-x\"", NULL, "-x", NULL);
    expect_error("unexpected argument \"--\"", NULL, "--", NULL);
    expect_error("--version takes no value", NULL, "--version=1", NULL);
    expect_error("--config: given twice", NULL, "--config", "a.yaml", "--config", "b.yaml", NULL);
    expect_error("--tls-cert: needs --tls-key", NULL, "--tls-cert", "c.pem", NULL);
    expect_error("--tls-key: needs --tls-cert", NULL, "--tls-key", "k.pem", NULL);
    expect_error("--tls-self-signed", "boolean", "--tls-self-signed=maybe", NULL);

    expect_error("--default-max-output-tokens", "1..10000000", "--default-max-output-tokens", "0", NULL);
    expect_error("--default-max-output-tokens", "1..10000000", "--default-max-output-tokens=10000001", NULL);
    expect_error("--default-max-output-tokens", "1..10000000", "--default-max-output-tokens", "12k", NULL);
    {
        llmrelay_config_t cfg;
        assert_int_equal(parse(&cfg, "--default-max-output-tokens", "256", NULL), 0);
        assert_int_equal(cfg.default_max_output_tokens, 256);
        config_dispose(&cfg);
    }

    /* Every value-taking flag: missing at the end, followed by another flag, and empty. */
    for (size_t i = 0; i < N_ALL; i++) {
        char flag[64], eq[64], want[96];
        snprintf(flag, sizeof(flag), "--%s", all_flags[i][0]);
        snprintf(eq, sizeof(eq), "--%s=", all_flags[i][0]);
        snprintf(want, sizeof(want), "--%s: missing value", all_flags[i][0]);
        expect_error(want, NULL, flag, NULL);
        expect_error(want, NULL, flag, "--workers", "2", NULL);
        expect_error(want, NULL, eq, NULL);
        expect_error(want, NULL, flag, "", NULL);
    }
    expect_error("--config: missing value", NULL, "--config", NULL);

    /* Bad values, each error naming its flag. */
    static const char *const bad[][2] = {
        {"name", "bad name"},
        {"name", "x/y"},
        {"name", "0123456789012345678901234567890123456789012345678901234567890123456789"},
        {"region", "eu west"},
        {"listen", "8443"},
        {"listen", "example.com:8443"},
        {"listen", "127.0.0.1:99999"},
        {"listen-plain", "::1:80"},
        {"admin-listen", "127.0.0.1"},
        {"gossip", "x:1"},
        {"peer-listen", "[::1]"},
        {"etcd", "127.0.0.1:2379"},
        {"etcd", "http://a:1,"},
        {"etcd", "http://"},
        {"etcd", "http://a b:1"},
        {"join", "node2"},
        {"join", "node2:0"},
        {"join", "node2:7946,,node3:1"},
        {"join", "::1:7946"},
        {"join", ":7946"},
        {"etcd-prefix", "/a b/"},
        {"workers", "257"},
        {"workers", "-1"},
        {"workers", "two"},
        {"workers", "2x"},
        {"log-level", "verbose"},
        {"log-level", "INFO"},
        {"tls-min-version", "1.1"},
        {"tls-min-version", "TLSv1.3"},
        {"max-body", "0"},
        {"max-body", "5GiB"},
        {"max-body", "32 MiB"},
        {"max-body", "1.5MiB"},
        {"max-body", "99999999999999999999"},
        {"usage-drain-timeout", "30"},
        {"shutdown-timeout", "1h30m"},
        {"retention", "0"},
        {"retention", "-7d"},
        {"upstream-connect-timeout", "0ms"},
        {"upstream-first-byte-timeout", "10 s"},
        {"upstream-idle-timeout", "99999999999999999999d"},
        {"data-dir", "a\tb"},
        {"tls-cert", "a\nb"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char flag[64], eq[256], want[64];
        snprintf(flag, sizeof(flag), "--%s", bad[i][0]);
        snprintf(eq, sizeof(eq), "--%s=%s", bad[i][0], bad[i][1]);
        snprintf(want, sizeof(want), "--%s: ", bad[i][0]);
        expect_error(want, NULL, flag, bad[i][1], NULL);
        expect_error(want, NULL, eq, NULL);
    }
}

static void expect_file_error(const char *yaml, const char *needle1, const char *needle2)
{
    char path[128], want[160];
    write_file("bad.yaml", yaml, path, sizeof(path));
    snprintf(want, sizeof(want), "%s/bad.yaml:%s", tmpdir, needle1);
    expect_error(want, needle2, "--config", path, NULL);
}

static void test_file_errors(void **state)
{
    (void)state;
    expect_file_error("listen: 0.0.0.0:8443\nbogus: 1\n", "2: unknown setting \"bogus\"", NULL);
    expect_file_error("# c\n\nworkers: lots\n", "3: workers: invalid worker count", NULL);
    expect_file_error("max_body: 10XB\n", "1: max-body: invalid size", NULL);
    expect_file_error("retention: 7\n", "1: retention: invalid duration", NULL);
    expect_file_error("region: a\nregion: b\n", "2: region: given twice", NULL);
    expect_file_error("region: a\nregion_: b\n", "2: unknown setting", NULL);
    expect_file_error("tls-cert:\n", "1: tls-cert: missing value", NULL);
    expect_file_error("tls-key: ~\n", "1: tls-key: missing value", NULL);
    expect_file_error("data-dir: \"\"\n", "1: data-dir: missing value", NULL);
    expect_file_error("listen:\n  host: a\n", "2: listen: expected a single value", NULL);
    expect_file_error("listen: [127.0.0.1:1]\n", "1: listen: expected a single value", NULL);
    expect_file_error("join: []\n", "1: join: empty list", NULL);
    expect_file_error("join:\n  - [a:1]\n", "2: join: list items must be strings", NULL);
    expect_file_error("join:\n  - a:1\n  - nope\n", "2: join: invalid list", NULL);
    expect_file_error("config: other.yaml\n", "1: unknown setting \"config\" (command line only)", NULL);
    expect_file_error("help: true\n", "1: unknown setting \"help\"", NULL);
    expect_file_error("- listen\n", "1: the file must be a mapping", NULL);
    expect_file_error("just a string\n", "1: the file must be a mapping", NULL);
    expect_file_error("region: x\nregion y\n", "3: invalid YAML", NULL);
    expect_file_error("{region: x\n", "", "invalid YAML");
    expect_file_error("listen: \"unterminated\n", "", "invalid YAML");
    expect_file_error("region: &r x\nname: *r\n", "2: YAML aliases are not supported", NULL);
    expect_file_error("region: a\n---\nregion: b\n", "2: only one YAML document", NULL);
    expect_file_error("? [a, b]\n: c\n", "1: expected a setting name", NULL);
    expect_file_error("tls-self-signed: perhaps\n", "1: tls-self-signed: invalid boolean", NULL);

    char path[128];
    snprintf(path, sizeof(path), "%s/missing.yaml", tmpdir);
    expect_error("--config: cannot read", "No such file", "--config", path, NULL);
    expect_error("--config: cannot read", NULL, "--config", tmpdir, NULL);

    write_file("certonly.yaml", "workers: 2\ntls-cert: c.pem\n", path, sizeof(path));
    expect_error("--tls-cert: needs --tls-key", NULL, "--config", path, NULL);

    /* A bad flag is reported even when the file is fine; a bad file even when flags are. */
    write_file("ok.yaml", "workers: 2\n", path, sizeof(path));
    expect_error("--workers: invalid", NULL, "--config", path, "--workers", "x", NULL);
    expect_error("unknown flag --nope", NULL, "--nope", "--config", path, NULL);
}

static void test_parse_duration(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } good[] = {
        {"0", 0},
        {"0ms", 0},
        {"0d", 0},
        {"1ms", 1},
        {"500ms", 500},
        {"30s", 30000},
        {"15m", 900000},
        {"24h", 86400000},
        {"7d", 604800000},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"213503982334d", 213503982334ULL * 86400000},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t ms = 12345;
        if (config_parse_duration(good[i].s, &ms) != 0 || ms != good[i].ms)
            fail_msg("\"%s\" -> %llu", good[i].s, (unsigned long long)ms);
    }
    static const char *const bad[] = {"",   "30",   "s",     "-1s", "+1s", "1.5s", " 1s", "1s ",
                                      "1S", "1sec", "1h30m", "1 s", "1w",  "1y",   "ms",  "0x10s"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms;
        if (config_parse_duration(bad[i], &ms) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    uint64_t ms;
    assert_int_equal(config_parse_duration("18446744073709551616ms", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("18446744073709551616", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("18446744073709552s", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("213503982335d", &ms), -ERANGE);
    assert_int_equal(config_parse_duration("99999999999999999999999999h", &ms), -ERANGE);
    assert_int_equal(config_parse_duration(NULL, &ms), -EINVAL);
}

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t bytes;
    } good[] = {
        {"0", 0},
        {"1", 1},
        {"65536", 65536},
        {"10B", 10},
        {"64KiB", 65536},
        {"64kib", 65536},
        {"64K", 65536},
        {"32MiB", 32ULL << 20},
        {"32M", 32ULL << 20},
        {"1GiB", 1ULL << 30},
        {"1G", 1ULL << 30},
        {"2TiB", 2ULL << 40},
        {"1KB", 1000},
        {"5MB", 5000000},
        {"1GB", 1000000000},
        {"1TB", 1000000000000ULL},
        {"18446744073709551615", UINT64_MAX},
        {"17179869183GiB", 17179869183ULL << 30},
    };
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint64_t b = 12345;
        if (config_parse_size(good[i].s, &b) != 0 || b != good[i].bytes)
            fail_msg("\"%s\" -> %llu", good[i].s, (unsigned long long)b);
    }
    static const char *const bad[] = {"",   "MiB",   "-1",   "+1",  "1.5MiB", "1 MiB",
                                      " 1", "1MiBx", "1EiB", "1PB", "1Mi",    "0x10"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t b;
        if (config_parse_size(bad[i], &b) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    uint64_t b;
    assert_int_equal(config_parse_size("18446744073709551616", &b), -ERANGE);
    assert_int_equal(config_parse_size("17179869184GiB", &b), -ERANGE);
    assert_int_equal(config_parse_size("16777216TiB", &b), -ERANGE);
    assert_int_equal(config_parse_size("18446744073709552KB", &b), -ERANGE);
    assert_int_equal(config_parse_size(NULL, &b), -EINVAL);
}

static int setup_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/llmrelay-test-config-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* The channel failover flags: defaults, both flag forms, the YAML names, the derived
 * breaker bounds and the range errors. */
static void test_channel_flags(void **state)
{
    (void)state;
    llmrelay_config_t cfg;
    assert_int_equal(parse(&cfg, NULL), 0);
    assert_int_equal(cfg.retry_policy.max_attempts, 3);
    assert_int_equal(cfg.retry_policy.budget_ms, 30000);
    assert_int_equal(cfg.breaker.threshold, 5);
    assert_int_equal(cfg.breaker.window_ms, 30000);
    assert_int_equal(cfg.breaker.cooldown_ms, 30000);
    assert_int_equal(cfg.breaker.cooldown_max_ms, 300000);
    assert_int_equal(cfg.breaker.probe_timeout_ms, 120000);
    config_dispose(&cfg);

    assert_int_equal(parse(&cfg, "--upstream-max-attempts", "10", "--upstream-retry-budget=2m", "--breaker-threshold",
                           "16", "--breaker-window", "500ms", "--breaker-cooldown=10m", NULL),
                     0);
    assert_int_equal(cfg.retry_policy.max_attempts, 10);
    assert_int_equal(cfg.retry_policy.budget_ms, 120000);
    assert_int_equal(cfg.breaker.threshold, 16);
    assert_int_equal(cfg.breaker.window_ms, 500);
    assert_int_equal(cfg.breaker.cooldown_ms, 600000);
    assert_int_equal(cfg.breaker.cooldown_max_ms, 600000); /* max(5 min, cool-down) */
    config_dispose(&cfg);

    char path[256];
    write_file("channels.yaml", "upstream_max_attempts: 1\nbreaker-threshold: 1\nbreaker_cooldown: 1s\n", path,
               sizeof(path));
    assert_int_equal(parse(&cfg, "--config", path, NULL), 0);
    assert_int_equal(cfg.retry_policy.max_attempts, 1);
    assert_int_equal(cfg.breaker.threshold, 1);
    assert_int_equal(cfg.breaker.cooldown_ms, 1000);
    assert_int_equal(cfg.breaker.cooldown_max_ms, 300000);
    config_dispose(&cfg);

    expect_error("--upstream-max-attempts", "1..10", "--upstream-max-attempts", "0", NULL);
    expect_error("--upstream-max-attempts", "1..10", "--upstream-max-attempts", "11", NULL);
    expect_error("--upstream-max-attempts", NULL, "--upstream-max-attempts", "2x", NULL);
    expect_error("--breaker-threshold", "1..16", "--breaker-threshold", "0", NULL);
    expect_error("--breaker-threshold", "1..16", "--breaker-threshold", "17", NULL);
    expect_error("--breaker-threshold", NULL, "--breaker-threshold", "-1", NULL);
    expect_error("--upstream-retry-budget", "greater than 0", "--upstream-retry-budget", "0", NULL);
    expect_error("--breaker-window", "greater than 0", "--breaker-window", "0", NULL);
    expect_error("--breaker-cooldown", "invalid duration", "--breaker-cooldown", "30", NULL);
    write_file("badbreaker.yaml", "workers: 1\nbreaker-threshold: 99\n", path, sizeof(path));
    expect_error(":2:", "breaker-threshold", "--config", path, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_channel_flags),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_every_flag_separate_value),
        cmocka_unit_test(test_every_flag_equals_value),
        cmocka_unit_test(test_bool_and_misc_values),
        cmocka_unit_test(test_version_and_help),
        cmocka_unit_test(test_yaml_file),
        cmocka_unit_test(test_yaml_precedence),
        cmocka_unit_test(test_flag_errors),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_size),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
