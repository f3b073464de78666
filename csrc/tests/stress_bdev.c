/*
 * stress_bdev.c - the block device under several threads: writers and
 * readers on their own blocks, a poller taking completions, a close racing
 * submissions, and the timeout convention.
 */
#include "dpdpu_bdev.h"
#include "harness.h"

#define BLOCK 4096u
#define THREADS 4
#define BLOCKS_PER_THREAD 48

struct bdev_poller {
    struct dpdpu_bdev *b;
    int64_t interval_us;
    int stop; /* __atomic */
    uint64_t taken;
    pthread_t thread;
};

/* user_data of every I/O a test submits: how often the poller took it. */
struct tracked {
    struct dpdpu_bdev_io io;
    int collected; /* __atomic */
};

static void *bdev_poller_main(void *arg)
{
    struct bdev_poller *p = arg;
    struct dpdpu_bdev_io *done[32];
    struct dpdpu_bdev_stats st;

    for (;;) {
        int rc = dpdpu_bdev_wait(p->b, 2000, p->interval_us);
        CHECK(rc >= 0 || rc == DPDPU_ERR_TIMEOUT);
        int n = dpdpu_bdev_poll(p->b, done, 32);
        for (int i = 0; i < n; i++) {
            struct tracked *t = (struct tracked *)(uintptr_t)done[i]->user_data;
            CHECK(__atomic_load_n(&done[i]->done, __ATOMIC_ACQUIRE));
            __atomic_fetch_add(&t->collected, 1, __ATOMIC_ACQ_REL);
        }
        p->taken += (uint64_t)n;
        if (n == 0 && __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
            CHECK_OK(dpdpu_bdev_get_stats(p->b, &st));
            if (st.in_flight == 0 && st.completed == 0)
                return NULL;
        }
    }
}

static void bdev_poller_start(struct bdev_poller *p, struct dpdpu_bdev *b, int64_t interval_us)
{
    memset(p, 0, sizeof(*p));
    p->b = b;
    p->interval_us = interval_us;
    CHECK(pthread_create(&p->thread, NULL, bdev_poller_main, p) == 0);
}

static void bdev_poller_stop(struct bdev_poller *p)
{
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    dpdpu_bdev_kick(p->b);
    CHECK(pthread_join(p->thread, NULL) == 0);
}

static struct dpdpu_bdev *open_bdev(const char *dir, const char *name, uint32_t flags, uint32_t depth,
                                    uint32_t workers, uint64_t blocks)
{
    char path[512];
    struct dpdpu_bdev_cfg cfg;
    struct dpdpu_bdev *b;

    snprintf(path, sizeof(path), "%s/%s", dir, name);
    cfg = (struct dpdpu_bdev_cfg){path, BLOCK, DPDPU_BDEV_CREATE | flags, blocks, depth, workers};
    CHECK_OK(dpdpu_bdev_open(&cfg, &b));
    return b;
}

static void *aligned(size_t len)
{
    void *p = NULL;
    CHECK(posix_memalign(&p, 4096, len) == 0);
    return p;
}

static void set_io(struct tracked *t, uint32_t type, uint64_t block, void *buf)
{
    memset(t, 0, sizeof(*t));
    t->io.type = type;
    t->io.offset = block * BLOCK;
    t->io.length = type == DPDPU_BDEV_IO_FLUSH ? 0 : BLOCK;
    t->io.buf = buf;
    t->io.user_data = (uint64_t)(uintptr_t)t;
}

/* ---- writers and readers ----------------------------------------------------- */

struct worker_args {
    struct dpdpu_bdev *b;
    int id;
    uint8_t *bufs;  /* BLOCKS_PER_THREAD blocks written */
    uint8_t *reads; /* and read back */
    struct tracked writes[BLOCKS_PER_THREAD];
    struct tracked readbacks[BLOCKS_PER_THREAD];
    struct tracked flush;
};

static void *io_worker_main(void *arg)
{
    struct worker_args *w = arg;
    uint64_t first = (uint64_t)w->id * BLOCKS_PER_THREAD;

    for (int i = 0; i < BLOCKS_PER_THREAD;) {
        /* Singles and batches, each waiting for room without limit. */
        int batch = i % 5 == 0 && i + 4 <= BLOCKS_PER_THREAD ? 4 : 1;
        struct dpdpu_bdev_io *ios[4];

        for (int k = 0; k < batch; k++) {
            uint8_t *buf = w->bufs + (size_t)(i + k) * BLOCK;
            t_fill(buf, BLOCK, first + (uint64_t)(i + k));
            set_io(&w->writes[i + k], DPDPU_BDEV_IO_WRITE, first + (uint64_t)(i + k), buf);
            ios[k] = &w->writes[i + k].io;
        }
        if (batch == 1)
            CHECK_OK(dpdpu_bdev_submit(w->b, ios[0], -1));
        else
            CHECK_RC(dpdpu_bdev_submit_batch(w->b, ios, (uint32_t)batch, -1), batch);
        i += batch;
    }
    for (int i = 0; i < BLOCKS_PER_THREAD; i++) {
        CHECK_OK(dpdpu_bdev_io_wait(w->b, &w->writes[i].io, -1));
        CHECK_OK(w->writes[i].io.status);
    }
    set_io(&w->flush, DPDPU_BDEV_IO_FLUSH, 0, NULL);
    CHECK_OK(dpdpu_bdev_submit(w->b, &w->flush.io, -1));
    CHECK_OK(dpdpu_bdev_io_wait(w->b, &w->flush.io, INT64_MAX));
    CHECK_OK(w->flush.io.status);
    for (int i = 0; i < BLOCKS_PER_THREAD; i++) {
        set_io(&w->readbacks[i], DPDPU_BDEV_IO_READ, first + (uint64_t)i, w->reads + (size_t)i * BLOCK);
        CHECK_OK(dpdpu_bdev_submit(w->b, &w->readbacks[i].io, -1));
    }
    for (int i = 0; i < BLOCKS_PER_THREAD; i++) {
        CHECK_OK(dpdpu_bdev_io_wait(w->b, &w->readbacks[i].io, -1));
        CHECK_OK(w->readbacks[i].io.status);
        CHECK(t_matches(w->reads + (size_t)i * BLOCK, BLOCK, first + (uint64_t)i));
    }
    return NULL;
}

static void writers_and_readers(const char *dir)
{
    static struct worker_args args[THREADS];
    /* Buffered, then direct I/O (or its fallback where the file system refuses it). */
    for (int round = 0; round < 2; round++) {
        struct dpdpu_bdev *b = open_bdev(dir, round ? "direct.bdev" : "buffered.bdev",
                                         round ? DPDPU_BDEV_DIRECT : 0, 8, 4, THREADS * BLOCKS_PER_THREAD);
        struct dpdpu_bdev_stats st;
        struct bdev_poller p;

        bdev_poller_start(&p, b, round ? 200 : 0);
        for (int i = 0; i < THREADS; i++) {
            args[i].b = b;
            args[i].id = i;
            args[i].bufs = aligned((size_t)BLOCKS_PER_THREAD * BLOCK);
            args[i].reads = aligned((size_t)BLOCKS_PER_THREAD * BLOCK);
        }
        t_run_threads(THREADS, io_worker_main, args, sizeof(args[0]));
        bdev_poller_stop(&p);
        CHECK(p.taken == (uint64_t)THREADS * (2 * BLOCKS_PER_THREAD + 1));
        for (int i = 0; i < THREADS; i++) {
            for (int k = 0; k < BLOCKS_PER_THREAD; k++)
                CHECK(args[i].writes[k].collected == 1 && args[i].readbacks[k].collected == 1);
            CHECK(args[i].flush.collected == 1);
            free(args[i].bufs);
            free(args[i].reads);
        }
        CHECK_OK(dpdpu_bdev_get_stats(b, &st));
        CHECK(st.writes == THREADS * BLOCKS_PER_THREAD && st.reads == THREADS * BLOCKS_PER_THREAD);
        CHECK(st.flushes == THREADS && st.failed == 0);
        CHECK_OK(dpdpu_bdev_close(b));
        dpdpu_bdev_release(b);
    }
}

/* ---- close while other threads submit ---------------------------------------- */

#define RACE_IOS 200

struct racer {
    struct dpdpu_bdev *b;
    uint64_t *submitted; /* __atomic, shared */
    int id;
    int n;
    uint8_t *buf;
    struct tracked ios[RACE_IOS];
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;

    for (int i = 0; i < RACE_IOS; i++) {
        struct tracked *t = &r->ios[r->n];
        int64_t timeout = i % 3 == 0 ? 0 : i % 3 == 1 ? 500 : -1;
        int rc;

        set_io(t, i % 7 == 6 ? DPDPU_BDEV_IO_FLUSH : i % 2 ? DPDPU_BDEV_IO_READ : DPDPU_BDEV_IO_WRITE,
               (uint64_t)(r->id * 16 + i % 16), r->buf + (size_t)(i % 16) * BLOCK);
        rc = dpdpu_bdev_submit(r->b, &t->io, timeout);
        if (rc == DPDPU_ERR_SHUTDOWN)
            break;
        CHECK(rc == DPDPU_OK || rc == DPDPU_ERR_AGAIN || rc == DPDPU_ERR_TIMEOUT);
        if (rc == DPDPU_OK) {
            r->n++;
            __atomic_fetch_add(r->submitted, 1, __ATOMIC_ACQ_REL);
        }
    }
    return NULL;
}

static void close_races_submitters(const char *dir)
{
    static struct racer racers[THREADS];
    pthread_t threads[THREADS];

    for (int round = 0; round < 16; round++) {
        struct dpdpu_bdev *b = open_bdev(dir, "race.bdev", 0, 2, 1 + (uint32_t)round % 2, THREADS * 16);
        struct bdev_poller p;
        uint64_t submitted = 0, total = 0;

        bdev_poller_start(&p, b, round % 2 ? 100 : 0);
        for (int i = 0; i < THREADS; i++) {
            memset(&racers[i], 0, sizeof(racers[i]));
            racers[i] = (struct racer){.b = b, .submitted = &submitted, .id = i};
            racers[i].buf = aligned(16 * BLOCK);
            memset(racers[i].buf, i, 16 * BLOCK);
            CHECK(pthread_create(&threads[i], NULL, racer_main, &racers[i]) == 0);
        }
        while (__atomic_load_n(&submitted, __ATOMIC_ACQUIRE) < (uint64_t)(4 + round * 3))
            sched_yield();
        CHECK_OK(dpdpu_bdev_close(b));
        CHECK_OK(dpdpu_bdev_close(b)); /* again: nothing to do */
        for (int i = 0; i < THREADS; i++)
            CHECK(pthread_join(threads[i], NULL) == 0);
        bdev_poller_stop(&p);
        for (int i = 0; i < THREADS; i++) {
            for (int k = 0; k < racers[i].n; k++) {
                /* Closing lets queued I/O finish. */
                CHECK(racers[i].ios[k].io.done && racers[i].ios[k].collected == 1);
                CHECK_OK(racers[i].ios[k].io.status);
            }
            total += (uint64_t)racers[i].n;
            free(racers[i].buf);
        }
        CHECK(p.taken == total);
        {
            struct tracked late;
            uint8_t *buf = aligned(BLOCK);
            set_io(&late, DPDPU_BDEV_IO_READ, 0, buf);
            CHECK_RC(dpdpu_bdev_submit(b, &late.io, -1), DPDPU_ERR_SHUTDOWN);
            free(buf);
        }
        dpdpu_bdev_release(b);
    }
}

/* ---- timeouts: negative no limit, 0 do not block, positive a bound ----------- */

struct kicker {
    struct dpdpu_bdev *b;
    uint64_t delay_us;
};

static void *kicker_main(void *arg)
{
    struct kicker *k = arg;
    t_sleep_us(k->delay_us);
    dpdpu_bdev_kick(k->b);
    return NULL;
}

static void timeout_convention(const char *dir)
{
    enum { BIG = 1u << 20, TRIES = 2000 };
    struct dpdpu_bdev *b = open_bdev(dir, "timeouts.bdev", 0, 1, 1, 2 * BIG / BLOCK);
    struct dpdpu_bdev_io first, second, *done[2];
    uint8_t *buf = aligned(BIG);
    struct kicker k = {b, 20000};
    pthread_t thread;
    uint64_t t0;
    int again = 0;

    memset(buf, 7, BIG);
    CHECK_RC(dpdpu_bdev_wait(b, 0, 0), DPDPU_ERR_TIMEOUT);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_bdev_wait(b, 2000, 0), DPDPU_ERR_TIMEOUT);
    CHECK(t_now_ns() - t0 >= 2000000);

    /* With one slot taken by a 1 MiB write, a submission that may not wait
     * is refused with AGAIN (the write is quick, so try until it is seen). */
    for (int i = 0; i < TRIES && !again; i++) {
        memset(&first, 0, sizeof(first));
        first = (struct dpdpu_bdev_io){.type = DPDPU_BDEV_IO_WRITE, .length = BIG, .buf = buf};
        second = (struct dpdpu_bdev_io){.type = DPDPU_BDEV_IO_WRITE, .offset = BIG, .length = BIG, .buf = buf};
        CHECK_OK(dpdpu_bdev_submit(b, &first, INT64_MAX));
        int rc = dpdpu_bdev_submit(b, &second, 0);
        CHECK(rc == DPDPU_OK || rc == DPDPU_ERR_AGAIN);
        again = rc == DPDPU_ERR_AGAIN;
        CHECK_OK(dpdpu_bdev_io_wait(b, &first, INT64_MAX));
        if (rc == DPDPU_OK)
            CHECK_OK(dpdpu_bdev_io_wait(b, &second, INT64_MAX / 1000 + 1));
        CHECK_RC(dpdpu_bdev_poll(b, done, 2), rc == DPDPU_OK ? 2 : 1);
    }
    CHECK(again);

    /* The longest timeouts mean "no limit", not a deadline wrapped into the past. */
    CHECK(pthread_create(&thread, NULL, kicker_main, &k) == 0);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_bdev_wait(b, INT64_MAX, 0), 0);
    CHECK(t_now_ns() - t0 >= 10000000);
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK(pthread_create(&thread, NULL, kicker_main, &k) == 0);
    CHECK_RC(dpdpu_bdev_wait(b, INT64_MAX / 1000 + 1, INT64_MAX), 0);
    CHECK(pthread_join(thread, NULL) == 0);
    dpdpu_bdev_release(b);
    free(buf);
}

int main(void)
{
    char dir[256];

    printf("stress_bdev\n");
    t_mkdtemp(dir, sizeof(dir));
    RUN(timeout_convention, dir);
    RUN(writers_and_readers, dir);
    RUN(close_races_submitters, dir);
    t_rmdir(dir);
    return 0;
}
