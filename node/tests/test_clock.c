/* Unit tests of the test-controllable clock: no file = real time; a file's offset applies
 * at start and again after it changes; a bad file is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <errno.h>

#include <cmocka.h>

#include "node/clock.h"

static int64_t real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_real_time_without_file(void **state)
{
    (void)state;
    unsetenv("LLMRELAY_CLOCK_FILE");
    node_clock_t c;
    assert_int_equal(clock_init(&c), 0);
    int64_t d = clock_now_ms(&c) - real_ms();
    assert_true(d > -1000 && d < 1000);
    assert_false(clock_poll(&c));
    clock_dispose(&c);
}

static void test_offset_and_change(void **state)
{
    (void)state;
    char path[] = "/tmp/llmrelay-clock-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "604800000\n");
    setenv("LLMRELAY_CLOCK_FILE", path, 1);
    node_clock_t c;
    assert_int_equal(clock_init(&c), 0);
    int64_t d = clock_now_ms(&c) - real_ms();
    assert_true(d > 604800000 - 1000 && d < 604800000 + 1000);
    /* A change is picked up by clock_poll (mtime differs: rewrite with a different time). */
    struct timespec pause = {0, 20 * 1000 * 1000};
    nanosleep(&pause, NULL);
    write_file(path, "-3600000");
    assert_true(clock_poll(&c));
    d = clock_now_ms(&c) - real_ms();
    assert_true(d > -3600000 - 1000 && d < -3600000 + 1000);
    assert_false(clock_poll(&c));
    clock_dispose(&c);
    unsetenv("LLMRELAY_CLOCK_FILE");
    unlink(path);
}

static void test_bad_file(void **state)
{
    (void)state;
    char path[] = "/tmp/llmrelay-clock-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "12 days");
    setenv("LLMRELAY_CLOCK_FILE", path, 1);
    node_clock_t c;
    assert_int_equal(clock_init(&c), -EINVAL);
    clock_dispose(&c);
    unlink(path);
    assert_true(clock_init(&c) < 0); /* missing file */
    clock_dispose(&c);
    unsetenv("LLMRELAY_CLOCK_FILE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_time_without_file),
        cmocka_unit_test(test_offset_and_change),
        cmocka_unit_test(test_bad_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
