/* privacy.h — keeping request and response content out of the node's memory once a request
 * is over, against what glibc and h2o keep by themselves (see NOTES-h2o-libcurl.md, "Keeping
 * content out of memory").
 *
 *   - glibc: freed chunks keep their bytes (those parked in the per-thread tcache are not
 *     even covered by M_PERTURB). The executable defines free/realloc/reallocarray
 *     (node/wipefree.c): every free, by any library, wipes the chunk first, so memory that
 *     libcurl, nghttp2, OpenSSL, h2o or yajl free carries no content afterwards.
 *   - h2o recycles request-pool chunks, socket buffers and HTTP/2 write buffers through
 *     thread-local lists without wiping them; two of those lists are static in libh2o.
 *     Linking privacy.c replaces libh2o's h2o_mem_free_recycle with one that wipes every
 *     block before keeping it (privacy_recycle_check tells whether that is in force): the
 *     written part of an HTTP/2 write buffer, every other block whole.
 *   - No core dump (PR_SET_DUMPABLE 0, RLIMIT_CORE 0) and no spill of big h2o buffers into
 *     temporary files (privacy_process_init).
 *
 * Under AddressSanitizer the sanitizer's allocator replaces glibc's and wipefree.c compiles
 * to nothing; the h2o part works there too. */
#ifndef LLMRELAY_NODE_PRIVACY_H
#define LLMRELAY_NODE_PRIVACY_H

#include <stddef.h>

#include <h2o/memory.h>
#include <openssl/ssl.h>

/* OpenSSL wipes decrypted records once read (not in a -DLLMRELAY_NO_WIPE bench build). */
#ifndef LLMRELAY_NO_WIPE
#define PRIVACY_CLEANSE_PLAINTEXT SSL_OP_CLEANSE_PLAINTEXT
#else
#define PRIVACY_CLEANSE_PLAINTEXT 0
#endif

/* 0 when the wiping free of node/wipefree.c is linked into the executable and is the free
 * every library calls (the dynamic linker's global lookup finds it first); -ENOTSUP
 * otherwise. Under AddressSanitizer: 0 (the sanitizer's allocator is in charge). */
int privacy_wipefree_check(void);

/* Process-wide, once, on the main thread before the workers start: PR_SET_DUMPABLE 0,
 * RLIMIT_CORE 0 (soft and hard), h2o_socket_buffer_mmap_settings.threshold = SIZE_MAX.
 * Returns 0, or the first error (the others are still applied): -ENOTSUP when freed memory
 * is not wiped (privacy_wipefree_check) or h2o's recycled blocks are not
 * (privacy_recycle_check), else -errno. */
int privacy_process_init(void);

/* 0 when the wiping h2o_mem_free_recycle of privacy.c is the one libh2o calls (checked by
 * clearing a pool of our own on the calling thread); -ENOTSUP otherwise. */
int privacy_recycle_check(void);

#endif
