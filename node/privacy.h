/* privacy.h — keeping request and response content out of the node's memory once a request
 * is over, against what glibc and h2o keep by themselves (see NOTES-h2o-libcurl.md, "Keeping
 * content out of memory").
 *
 *   - glibc: freed chunks keep their bytes, and those parked in the per-thread tcache are
 *     not even covered by M_PERTURB. privacy_reexec turns the tcache off (an environment
 *     tunable, so the process re-executes itself once) and sets M_PERTURB, so every free()
 *     overwrites the chunk: memory that libcurl, nghttp2, OpenSSL, h2o or yajl free carries
 *     no content afterwards.
 *   - h2o recycles request-pool chunks, socket buffers and HTTP/2 write buffers through
 *     thread-local lists without wiping them; two of those lists are static in libh2o.
 *     Linking privacy.c replaces libh2o's h2o_mem_free_recycle with one that wipes every
 *     block before keeping it (privacy_recycle_check tells whether that is in force), and
 *     privacy_thread_init turns the socket-buffer list off.
 *   - No core dump (PR_SET_DUMPABLE 0, RLIMIT_CORE 0) and no spill of big h2o buffers into
 *     temporary files (privacy_process_init).
 *
 * Under AddressSanitizer the sanitizer's allocator replaces glibc's: privacy_reexec then
 * does nothing (it neither re-executes nor calls mallopt). The h2o part works there too. */
#ifndef LLMRELAY_NODE_PRIVACY_H
#define LLMRELAY_NODE_PRIVACY_H

#include <stddef.h>

#include <h2o/memory.h>

/* The tunable that turns glibc's tcache off, and the variable that marks a re-executed
 * process (so a process whose environment cannot carry the tunable never loops). */
#define PRIVACY_TUNABLE "glibc.malloc.tcache_count=0"
#define PRIVACY_REEXEC_MARKER "LLMRELAY_PRIVACY_REEXEC"
/* What free() writes over every freed chunk (malloc fills new chunks with its complement,
 * 0x00, so memory read before it is written is zero, as before). */
#define PRIVACY_PERTURB_BYTE 0xff

/* Call first thing in main, before any thread or allocation that matters. If the
 * environment lacks PRIVACY_TUNABLE, adds it to GLIBC_TUNABLES (other tunables kept, an
 * other tcache_count replaced) and re-executes /proc/self/exe with the same argv; this
 * happens at most once (PRIVACY_REEXEC_MARKER). Then sets M_PERTURB.
 * Returns 0 when both are in force; -errno when the re-exec failed (the process goes on
 * with the tcache on: the caller should say so); -ENOTSUP when the tunable is still
 * missing after a re-exec or mallopt refused. Never returns on a successful re-exec.
 * argv is the one main received (not modified, not kept). */
int privacy_reexec(int argc, char **argv);

/* Computes the GLIBC_TUNABLES value that has PRIVACY_TUNABLE: `current` (may be NULL) with
 * any glibc.malloc.tcache_count entry removed and PRIVACY_TUNABLE appended. Writes it
 * NUL-terminated into out. Returns 0 when current already has it (out = current), 1 when
 * out differs, -E2BIG when out is too small. Pure: for tests. */
int privacy_tunables_value(const char *current, char *out, size_t outlen);

/* Process-wide, once, on the main thread before the workers start: PR_SET_DUMPABLE 0,
 * RLIMIT_CORE 0 (soft and hard), h2o_socket_buffer_mmap_settings.threshold = SIZE_MAX.
 * Returns 0, or the first error (the others are still applied): -ENOTSUP when h2o's
 * recycled blocks are not wiped (privacy_recycle_check), else -errno. */
int privacy_process_init(void);

/* Per thread that runs h2o (each worker; the main thread for the admin listener), before
 * it serves anything: h2o's thread-local socket-buffer list stops keeping buffers
 * (allocator.max = 0): they are freed, and glibc's perturb wipes them. */
void privacy_thread_init(void);

/* 0 when the wiping h2o_mem_free_recycle of privacy.c is the one libh2o calls (checked by
 * clearing a pool of our own on the calling thread); -ENOTSUP otherwise. */
int privacy_recycle_check(void);

#endif
