/*
 * harness.h - the little the native stress tests share: checks that abort
 * with a message, a clock, threads started in bulk, a scratch directory.
 *
 * The tests drive the core's public C API from several threads at once, so
 * that a sanitizer build (csrc/tests/run-sanitizers) sees every lock, queue
 * and wake-up under contention.  Each test program is one main() running
 * named cases; a failed check aborts, which the runner reports.
 */
#ifndef DPDPU_TESTS_HARNESS_H
#define DPDPU_TESTS_HARNESS_H

#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>

#include "dpdpu.h"

#define CHECK(cond)                                                                                    \
    do {                                                                                               \
        if (!(cond)) {                                                                                 \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);                  \
            abort();                                                                                   \
        }                                                                                              \
    } while (0)

/* A call that must return `want` (a status, or a count). */
#define CHECK_RC(expr, want)                                                                           \
    do {                                                                                               \
        long long got_ = (long long)(expr);                                                            \
        long long want_ = (long long)(want);                                                           \
        if (got_ != want_) {                                                                           \
            fprintf(stderr, "%s:%d: %s returned %lld (%s), expected %lld (%s)\n", __FILE__, __LINE__, \
                    #expr, got_, got_ <= 0 ? dpdpu_status_name((int)got_) : "count", want_,           \
                    want_ <= 0 ? dpdpu_status_name((int)want_) : "count");                            \
            abort();                                                                                   \
        }                                                                                              \
    } while (0)

#define CHECK_OK(expr) CHECK_RC(expr, DPDPU_OK)

static inline uint64_t t_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void t_sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* Start n threads running fn(&args[i]) (args is an array of `size`-byte
 * elements) and join them all. */
static inline void t_run_threads(int n, void *(*fn)(void *), void *args, size_t size)
{
    pthread_t threads[64];

    CHECK(n > 0 && n <= 64);
    for (int i = 0; i < n; i++)
        CHECK(pthread_create(&threads[i], NULL, fn, (char *)args + (size_t)i * size) == 0);
    for (int i = 0; i < n; i++)
        CHECK(pthread_join(threads[i], NULL) == 0);
}

/* A fresh directory under $TMPDIR (or /tmp), removed by t_rmdir(). */
static inline void t_mkdtemp(char *path, size_t cap)
{
    const char *base = getenv("TMPDIR");
    snprintf(path, cap, "%s/dpdpu-stress-XXXXXX", base != NULL && base[0] != '\0' ? base : "/tmp");
    CHECK(mkdtemp(path) != NULL);
}

/* Remove a directory made by t_mkdtemp() and the files in it. */
static inline void t_rmdir(const char *path)
{
    char file[512];
    struct dirent *ent;
    DIR *d = opendir(path);

    CHECK(d != NULL);
    while ((ent = readdir(d)) != NULL) {
        if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0)
            continue;
        snprintf(file, sizeof(file), "%s/%s", path, ent->d_name);
        CHECK(unlink(file) == 0);
    }
    closedir(d);
    CHECK(rmdir(path) == 0);
}

/* Deterministic bytes of message or block `seq`, so that a reader can check
 * what it got without a copy of what was sent. */
static inline void t_fill(uint8_t *buf, size_t len, uint64_t seq)
{
    uint64_t x = seq * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (uint8_t)x;
    }
}

static inline int t_matches(const uint8_t *buf, size_t len, uint64_t seq)
{
    uint64_t x = seq * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (buf[i] != (uint8_t)x)
            return 0;
    }
    return 1;
}

/* Run one named case (with its arguments), saying how long it took. */
#define RUN(fn, ...)                                                                                   \
    do {                                                                                               \
        uint64_t t0_ = t_now_ns();                                                                     \
        fn(__VA_ARGS__);                                                                               \
        printf("  %-34s ok  %6.0f ms\n", #fn, (double)(t_now_ns() - t0_) / 1e6);                       \
        fflush(stdout);                                                                                \
    } while (0)

#endif /* DPDPU_TESTS_HARNESS_H */
