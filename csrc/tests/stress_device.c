/*
 * stress_device.c - devices, engine queues, the progress engine and device
 * memory under several threads at once: submitters, a poller, workers that
 * wait for other tasks, a close racing submissions, and the timeout
 * convention (negative: no limit, 0: do not block, positive: a bound).
 */
#include <zlib.h>

#include "harness.h"

enum cb_mode {
    CB_CRC = 0,    /* result = crc32c of the source */
    CB_NESTED = 1, /* submit a memcpy to the same engine and wait for it */
    CB_GATE = 2    /* block until the gate opens */
};

static int gate_open;

struct nested {
    struct dpdpu_pe *pe;
    struct dpdpu_dev *dev;
    struct dpdpu_task task;
    uint8_t src[512];
    uint8_t dst[512];
};

static int callback(struct dpdpu_task *task)
{
    switch (task->param) {
    case CB_CRC:
        task->result = dpdpu_crc32c(0, task->src.addr, task->src.len);
        return DPDPU_OK;
    case CB_NESTED: {
        struct nested *n = (struct nested *)(uintptr_t)task->user_data;
        int rc;

        memset(&n->task, 0, sizeof(n->task));
        n->task.op = DPDPU_OP_MEMCPY;
        n->task.engine = task->engine;
        t_fill(n->src, sizeof(n->src), task->user_data);
        CHECK_OK(dpdpu_task_map_host(&n->task, n->dev, 0, n->src, sizeof(n->src)));
        CHECK_OK(dpdpu_task_map_host(&n->task, n->dev, 1, n->dst, sizeof(n->dst)));
        if ((rc = dpdpu_task_submit(n->pe, n->dev, &n->task, -1, DPDPU_SUBMIT_QUEUE)) != DPDPU_OK)
            return rc;
        /* The only worker of the engine waits here: the nested task runs only
         * because a waiting worker helps with its own queue. */
        CHECK_OK(dpdpu_task_wait(n->pe, &n->task, -1));
        return n->task.status;
    }
    case CB_GATE:
        while (!__atomic_load_n(&gate_open, __ATOMIC_ACQUIRE))
            t_sleep_us(100);
        return DPDPU_OK;
    default:
        return DPDPU_ERR_INVALID_ARGUMENT;
    }
}

#define OP_BIT(op) (1u << (op))

static struct dpdpu_dev *open_dev(uint32_t workers, uint32_t depth, uint64_t memory)
{
    struct dpdpu_dev_cfg cfg;
    struct dpdpu_dev *dev;

    memset(&cfg, 0, sizeof(cfg));
    cfg.name = "stress";
    cfg.memory_bytes = memory;
    cfg.callback = callback;
    cfg.n_engines = 2;
    cfg.engines[0] = (struct dpdpu_engine_cfg){
        "arm",
        OP_BIT(DPDPU_OP_NOP) | OP_BIT(DPDPU_OP_MEMCPY) | OP_BIT(DPDPU_OP_CRC32C) |
            OP_BIT(DPDPU_OP_DEFLATE_COMPRESS) | OP_BIT(DPDPU_OP_DEFLATE_DECOMPRESS) | OP_BIT(DPDPU_OP_CALLBACK),
        workers, depth, 0, 0};
    cfg.engines[1] = (struct dpdpu_engine_cfg){
        "accel", OP_BIT(DPDPU_OP_DEFLATE_COMPRESS) | OP_BIT(DPDPU_OP_DEFLATE_DECOMPRESS) | OP_BIT(DPDPU_OP_CRC32C),
        1, 4, 1u << 20, 1};
    CHECK_OK(dpdpu_dev_open(&cfg, &dev));
    return dev;
}

/* ---- a poller thread that takes every completion off the queue ------------ */

struct poller {
    struct dpdpu_pe *pe;
    int64_t interval_us;
    int stop; /* __atomic */
    uint64_t taken;
    pthread_t thread;
};

/* Every task a test submits carries one of these in user_data... */
struct slot {
    struct dpdpu_task task;
    int collected; /* __atomic: times the poller took it off the queue */
    int inline_run;
    int waited;
    uint32_t len;
    uint8_t *src;
    uint8_t *dst;
    uint8_t *aux; /* deflate: the compressed input of a decompression */
    uint64_t aux_len;
};

static void *poller_main(void *arg)
{
    struct poller *p = arg;
    struct dpdpu_task *done[32];

    for (;;) {
        int rc = dpdpu_pe_wait(p->pe, 2000, p->interval_us);
        CHECK(rc >= 0 || rc == DPDPU_ERR_TIMEOUT);
        int n = dpdpu_pe_progress(p->pe, done, 32);
        for (int i = 0; i < n; i++) {
            struct slot *s = (struct slot *)(uintptr_t)done[i]->user_data;
            CHECK(__atomic_load_n(&done[i]->done, __ATOMIC_ACQUIRE));
            if (s != NULL)
                __atomic_fetch_add(&s->collected, 1, __ATOMIC_ACQ_REL);
        }
        p->taken += (uint64_t)n;
        if (n == 0 && __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) && dpdpu_pe_outstanding(p->pe) == 0)
            return NULL;
    }
}

static void poller_start(struct poller *p, struct dpdpu_pe *pe, int64_t interval_us)
{
    memset(p, 0, sizeof(*p));
    p->pe = pe;
    p->interval_us = interval_us;
    CHECK(pthread_create(&p->thread, NULL, poller_main, p) == 0);
}

static void poller_stop(struct poller *p)
{
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    dpdpu_pe_kick(p->pe);
    CHECK(pthread_join(p->thread, NULL) == 0);
}

/* ---- submitters and a poller ------------------------------------------------ */

#define SUBMITTERS 4
#define PER_SUBMITTER 240

struct submitter {
    struct dpdpu_dev *dev;
    struct dpdpu_pe *pe;
    int id;
    struct slot slots[PER_SUBMITTER];
};

static void submit_one(struct submitter *me, struct slot *s, uint64_t seq)
{
    struct dpdpu_task *t = &s->task;
    uint32_t kind = (uint32_t)(seq % 6);
    uint32_t flags = DPDPU_SUBMIT_QUEUE;
    int rc;

    memset(t, 0, sizeof(*t));
    s->len = 1 + (uint32_t)(seq * 7919 % 8192);
    s->src = malloc(s->len);
    CHECK(s->src != NULL);
    t_fill(s->src, s->len, seq);
    t->user_data = (uint64_t)(uintptr_t)s;
    CHECK_OK(dpdpu_task_map_host(t, me->dev, 0, s->src, s->len));
    switch (kind) {
    case 0: /* memcpy, sometimes run on the submitting thread */
        t->op = DPDPU_OP_MEMCPY;
        s->dst = malloc(s->len);
        CHECK_OK(dpdpu_task_map_host(t, me->dev, 1, s->dst, s->len));
        if (s->len <= 4096 && seq % 2 == 0)
            flags = DPDPU_SUBMIT_INLINE;
        break;
    case 1:
        t->op = DPDPU_OP_CRC32C;
        t->engine = (uint32_t)(seq / 6 % 2);
        break;
    case 2: { /* deflate on either engine */
        uint64_t cap = dpdpu_deflate_bound(s->len);
        t->op = DPDPU_OP_DEFLATE_COMPRESS;
        t->engine = (uint32_t)(seq / 6 % 2);
        t->param = (int64_t)(seq % 10);
        s->dst = malloc(cap);
        CHECK_OK(dpdpu_task_map_host(t, me->dev, 1, s->dst, cap));
        break;
    }
    case 3: { /* inflate what zlib made */
        uLongf clen = compressBound(s->len);
        s->aux = malloc(clen);
        CHECK(compress2(s->aux, &clen, s->src, s->len, 6) == Z_OK);
        s->aux_len = clen;
        t->op = DPDPU_OP_DEFLATE_DECOMPRESS;
        t->engine = 1;
        s->dst = malloc(s->len);
        CHECK_OK(dpdpu_task_map_host(t, me->dev, 0, s->aux, clen));
        CHECK_OK(dpdpu_task_map_host(t, me->dev, 1, s->dst, s->len));
        break;
    }
    case 4:
        t->op = DPDPU_OP_CALLBACK;
        t->param = CB_CRC;
        break;
    default:
        t->op = DPDPU_OP_NOP;
        flags = DPDPU_SUBMIT_INLINE;
        break;
    }
    rc = dpdpu_task_submit(me->pe, me->dev, t, -1, flags);
    CHECK(rc == DPDPU_OK || rc == 1);
    s->inline_run = rc == 1;
    if (rc == 1)
        CHECK(__atomic_load_n(&t->done, __ATOMIC_ACQUIRE));
    else if (seq % 3 == 0) {
        /* The submitter takes its own completion's wake-up; the poller still
         * takes the task off the queue. */
        CHECK_OK(dpdpu_task_wait(me->pe, t, -1));
        s->waited = 1;
    }
}

static void check_slot(struct slot *s)
{
    struct dpdpu_task *t = &s->task;

    CHECK(__atomic_load_n(&t->done, __ATOMIC_ACQUIRE));
    CHECK_OK(t->status);
    CHECK(__atomic_load_n(&s->collected, __ATOMIC_ACQUIRE) == (s->inline_run ? 0 : 1));
    switch (t->op) {
    case DPDPU_OP_MEMCPY:
        CHECK(t->result == s->len && memcmp(s->src, s->dst, s->len) == 0);
        break;
    case DPDPU_OP_CRC32C:
    case DPDPU_OP_CALLBACK:
        CHECK(t->result == dpdpu_crc32c(0, s->src, s->len));
        break;
    case DPDPU_OP_DEFLATE_COMPRESS: {
        uint8_t *back = malloc(s->len);
        uLongf back_len = s->len;
        CHECK(uncompress(back, &back_len, s->dst, (uLong)t->result) == Z_OK);
        CHECK(back_len == s->len && memcmp(back, s->src, s->len) == 0);
        free(back);
        break;
    }
    case DPDPU_OP_DEFLATE_DECOMPRESS:
        CHECK(t->result == s->len && memcmp(s->src, s->dst, s->len) == 0);
        break;
    default:
        break;
    }
    free(s->src);
    free(s->dst);
    free(s->aux);
}

static void *submitter_main(void *arg)
{
    struct submitter *me = arg;

    for (int i = 0; i < PER_SUBMITTER; i++)
        submit_one(me, &me->slots[i], (uint64_t)me->id * PER_SUBMITTER + (uint64_t)i);
    return NULL;
}

static void submitters_and_poller(void)
{
    static struct submitter subs[SUBMITTERS];
    struct dpdpu_engine_stats st;
    struct dpdpu_pe *pe;
    struct poller poller;
    uint64_t tasks = 0, inlined = 0, queued = 0;

    for (int round = 0; round < 2; round++) {
        struct dpdpu_dev *dev = open_dev(3, 8, 4u << 20);
        CHECK_OK(dpdpu_pe_create(&pe));
        /* Both ways of waiting for completions: woken by each, or polling. */
        poller_start(&poller, pe, round == 0 ? 0 : 200);
        for (int i = 0; i < SUBMITTERS; i++) {
            memset(&subs[i], 0, sizeof(subs[i]));
            subs[i].dev = dev;
            subs[i].pe = pe;
            subs[i].id = i;
        }
        t_run_threads(SUBMITTERS, submitter_main, subs, sizeof(subs[0]));
        poller_stop(&poller);
        tasks = inlined = queued = 0;
        for (int i = 0; i < SUBMITTERS; i++)
            for (int k = 0; k < PER_SUBMITTER; k++) {
                queued += !subs[i].slots[k].inline_run;
                check_slot(&subs[i].slots[k]);
            }
        for (uint32_t e = 0; e < dpdpu_dev_engine_count(dev); e++) {
            CHECK_OK(dpdpu_dev_engine_stats(dev, e, &st));
            CHECK(st.in_flight == 0 && st.failed == 0);
            tasks += st.tasks;
            inlined += st.inlined;
        }
        CHECK(tasks == (uint64_t)SUBMITTERS * PER_SUBMITTER);
        CHECK(tasks - inlined == queued && poller.taken == queued);
        CHECK(dpdpu_dev_mem_used(dev) == 0);
        CHECK_OK(dpdpu_dev_close(dev, 1));
        dpdpu_dev_release(dev);
        CHECK_OK(dpdpu_pe_destroy(pe));
    }
}

/* ---- a worker waiting for another task of its own engine -------------------- */

static void helping_worker(void)
{
    enum { N = 12 };
    static struct nested nested[N];
    struct dpdpu_task outer[N];
    struct dpdpu_task *done[2 * N];
    struct dpdpu_dev *dev = open_dev(1, 2 * N, 0);
    struct dpdpu_pe *pe;
    int taken = 0;

    CHECK_OK(dpdpu_pe_create(&pe));
    for (int i = 0; i < N; i++) {
        nested[i].pe = pe;
        nested[i].dev = dev;
        memset(&outer[i], 0, sizeof(outer[i]));
        outer[i].op = DPDPU_OP_CALLBACK;
        outer[i].param = CB_NESTED;
        outer[i].user_data = (uint64_t)(uintptr_t)&nested[i];
        CHECK_OK(dpdpu_task_submit(pe, dev, &outer[i], -1, DPDPU_SUBMIT_QUEUE));
    }
    for (int i = 0; i < N; i++) {
        CHECK_OK(dpdpu_task_wait(pe, &outer[i], 10 * 1000000));
        CHECK_OK(outer[i].status);
        CHECK(memcmp(nested[i].src, nested[i].dst, sizeof(nested[i].src)) == 0);
    }
    while (taken < 2 * N)
        taken += dpdpu_pe_progress(pe, done, 2 * N);
    CHECK(dpdpu_pe_outstanding(pe) == 0);
    CHECK_OK(dpdpu_dev_close(dev, 1));
    dpdpu_dev_release(dev);
    CHECK_OK(dpdpu_pe_destroy(pe));
}

/* ---- close while other threads submit --------------------------------------- */

#define RACERS 4
#define RACER_TASKS 256

struct racer {
    struct dpdpu_dev *dev;
    struct dpdpu_pe *pe;
    uint64_t *submitted; /* __atomic, shared */
    int id;
    int n; /* tasks queued */
    int shutdown_seen;
    uint8_t src[4096];
    uint8_t dst[RACER_TASKS][512];
    struct dpdpu_task tasks[RACER_TASKS];
};

static void *racer_main(void *arg)
{
    struct racer *me = arg;

    t_fill(me->src, sizeof(me->src), (uint64_t)me->id);
    for (int i = 0; i < RACER_TASKS; i++) {
        struct dpdpu_task *t = &me->tasks[me->n];
        /* Each kind of wait for room: none, bounded, unbounded. */
        int64_t timeout = i % 3 == 0 ? 0 : i % 3 == 1 ? 1000 : -1;
        int rc;

        memset(t, 0, sizeof(*t));
        t->op = i % 4 == 0 ? DPDPU_OP_NOP : DPDPU_OP_MEMCPY;
        rc = dpdpu_task_map_host(t, me->dev, 0, me->src, 512);
        if (rc == DPDPU_OK)
            rc = dpdpu_task_map_host(t, me->dev, 1, me->dst[me->n], 512);
        if (rc == DPDPU_OK)
            rc = dpdpu_task_submit(me->pe, me->dev, t, timeout, i % 5 == 0 ? DPDPU_SUBMIT_INLINE : 0);
        if (rc == DPDPU_ERR_SHUTDOWN) {
            me->shutdown_seen = 1;
            break;
        }
        CHECK(rc == DPDPU_OK || rc == 1 || rc == DPDPU_ERR_AGAIN || rc == DPDPU_ERR_TIMEOUT);
        if (rc == DPDPU_OK || rc == 1) {
            me->n++;
            __atomic_fetch_add(me->submitted, 1, __ATOMIC_ACQ_REL);
        }
    }
    return NULL;
}

struct closer {
    struct dpdpu_dev *dev;
    int drain;
    int rc;
};

static void *closer_main(void *arg)
{
    struct closer *c = arg;
    c->rc = dpdpu_dev_close(c->dev, c->drain);
    return NULL;
}

static void close_races_submitters(void)
{
    static struct racer racers[RACERS];
    pthread_t threads[RACERS];

    for (int round = 0; round < 24; round++) {
        struct dpdpu_dev *dev = open_dev(2, 4, 1u << 20);
        struct dpdpu_mmap *kept;
        struct dpdpu_pe *pe;
        struct poller poller;
        struct closer closers[2];
        struct dpdpu_task late;
        uint64_t submitted = 0;
        int drain = round % 2, ok = 0;

        CHECK_OK(dpdpu_pe_create(&pe));
        /* A map outliving the device handle keeps the device alive. */
        CHECK_OK(dpdpu_mmap_alloc(dev, 4096, &kept));
        poller_start(&poller, pe, round % 4 < 2 ? 0 : 100);
        for (int i = 0; i < RACERS; i++) {
            memset(&racers[i], 0, offsetof(struct racer, src));
            racers[i].dev = dev;
            racers[i].pe = pe;
            racers[i].submitted = &submitted;
            racers[i].id = i;
            CHECK(pthread_create(&threads[i], NULL, racer_main, &racers[i]) == 0);
        }
        /* Close once the submitters are busy; two threads try at once. */
        while (__atomic_load_n(&submitted, __ATOMIC_ACQUIRE) < (uint64_t)(8 + round * 4))
            sched_yield();
        closers[0] = (struct closer){dev, drain, 1};
        closers[1] = (struct closer){dev, drain, 1};
        t_run_threads(2, closer_main, closers, sizeof(closers[0]));
        for (int i = 0; i < 2; i++) {
            CHECK(closers[i].rc == DPDPU_OK || closers[i].rc == DPDPU_ERR_INVALID_ARGUMENT);
            ok += closers[i].rc == DPDPU_OK;
        }
        CHECK(ok == 1);
        for (int i = 0; i < RACERS; i++)
            CHECK(pthread_join(threads[i], NULL) == 0);
        poller_stop(&poller);

        for (int i = 0; i < RACERS; i++) {
            for (int k = 0; k < racers[i].n; k++) {
                struct dpdpu_task *t = &racers[i].tasks[k];
                CHECK(__atomic_load_n(&t->done, __ATOMIC_ACQUIRE));
                CHECK(t->status == DPDPU_OK || (!drain && t->status == DPDPU_ERR_SHUTDOWN));
                if (t->status == DPDPU_OK && t->op == DPDPU_OP_MEMCPY)
                    CHECK(memcmp(racers[i].dst[k], racers[i].src, 512) == 0);
            }
        }
        /* Closed: nothing new is accepted, counters stay readable. */
        memset(&late, 0, sizeof(late));
        late.op = DPDPU_OP_NOP;
        CHECK_RC(dpdpu_task_submit(pe, dev, &late, -1, 0), DPDPU_ERR_SHUTDOWN);
        CHECK_RC(dpdpu_task_map_host(&late, dev, 0, racers[0].src, 16), DPDPU_ERR_SHUTDOWN);
        {
            struct dpdpu_mmap *m;
            struct dpdpu_engine_stats st;
            CHECK_RC(dpdpu_mmap_alloc(dev, 64, &m), DPDPU_ERR_SHUTDOWN);
            CHECK_OK(dpdpu_dev_engine_stats(dev, 0, &st));
            CHECK(st.in_flight == 0);
        }
        CHECK(dpdpu_dev_mem_used(dev) == 4096);
        CHECK(dpdpu_pe_outstanding(pe) == 0);
        CHECK_OK(dpdpu_pe_destroy(pe));
        dpdpu_dev_release(dev);
        CHECK_OK(dpdpu_mmap_destroy(kept));
    }
}

/* ---- device memory reserved and released from many threads ----------------- */

struct allocator {
    struct dpdpu_dev *dev;
    int refused;
};

static void *allocator_main(void *arg)
{
    struct allocator *a = arg;

    for (int i = 0; i < 400; i++) {
        struct dpdpu_mmap *m;
        int rc = dpdpu_mmap_alloc(a->dev, 1024 + (uint64_t)(i % 7) * 4096, &m);
        CHECK(rc == DPDPU_OK || rc == DPDPU_ERR_NO_DEVICE_MEMORY);
        if (rc == DPDPU_ERR_NO_DEVICE_MEMORY) {
            a->refused++;
            continue;
        }
        ((volatile uint8_t *)dpdpu_mmap_addr(m))[dpdpu_mmap_len(m) - 1] = 1;
        CHECK(dpdpu_dev_mem_used(a->dev) <= dpdpu_dev_mem_capacity(a->dev));
        CHECK_OK(dpdpu_mmap_destroy(m));
    }
    return NULL;
}

static void device_memory(void)
{
    struct allocator allocs[4];
    struct dpdpu_dev *dev = open_dev(1, 4, 64u << 10);

    for (int i = 0; i < 4; i++)
        allocs[i] = (struct allocator){dev, 0};
    t_run_threads(4, allocator_main, allocs, sizeof(allocs[0]));
    CHECK(dpdpu_dev_mem_used(dev) == 0);
    dpdpu_dev_release(dev);
}

/* ---- timeouts: negative no limit, 0 do not block, positive a bound ----------- */

struct delayed {
    struct dpdpu_pe *pe;
    uint64_t delay_us;
    int open_gate; /* else kick the progress engine */
};

static void *delayed_main(void *arg)
{
    struct delayed *d = arg;

    t_sleep_us(d->delay_us);
    if (d->open_gate)
        __atomic_store_n(&gate_open, 1, __ATOMIC_RELEASE);
    else
        dpdpu_pe_kick(d->pe);
    return NULL;
}

static uint64_t elapsed_us(uint64_t since)
{
    return (t_now_ns() - since) / 1000;
}

static void timeout_convention(void)
{
    struct dpdpu_dev *dev = open_dev(1, 1, 0);
    struct dpdpu_task gated, next, *done[4];
    struct dpdpu_pe *pe;
    struct delayed d;
    pthread_t helper;
    uint64_t t0;

    CHECK_OK(dpdpu_pe_create(&pe));
    __atomic_store_n(&gate_open, 0, __ATOMIC_RELEASE);
    memset(&gated, 0, sizeof(gated));
    gated.op = DPDPU_OP_CALLBACK;
    gated.param = CB_GATE;
    CHECK_OK(dpdpu_task_submit(pe, dev, &gated, -1, 0));
    memset(&next, 0, sizeof(next));
    next.op = DPDPU_OP_NOP;

    /* A full queue: 0 does not wait, a bound waits that long. */
    t0 = t_now_ns();
    CHECK_RC(dpdpu_task_submit(pe, dev, &next, 0, 0), DPDPU_ERR_AGAIN);
    CHECK(elapsed_us(t0) < 500000);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_task_submit(pe, dev, &next, 3000, 0), DPDPU_ERR_TIMEOUT);
    CHECK(elapsed_us(t0) >= 3000);

    /* Waits report TIMEOUT whether they did not block or blocked in vain. */
    CHECK_RC(dpdpu_task_wait(pe, &gated, 0), DPDPU_ERR_TIMEOUT);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_task_wait(pe, &gated, 2000), DPDPU_ERR_TIMEOUT);
    CHECK(elapsed_us(t0) >= 2000);
    CHECK_RC(dpdpu_pe_wait(pe, 0, 0), DPDPU_ERR_TIMEOUT);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_pe_wait(pe, 2000, 0), DPDPU_ERR_TIMEOUT);
    CHECK(elapsed_us(t0) >= 2000);
    CHECK_RC(dpdpu_pe_wait(pe, 0, 500), DPDPU_ERR_TIMEOUT);

    /* The longest timeouts mean "no limit", not a deadline that wrapped into
     * the past. */
    d = (struct delayed){pe, 20000, 1};
    CHECK(pthread_create(&helper, NULL, delayed_main, &d) == 0);
    t0 = t_now_ns();
    CHECK_OK(dpdpu_task_submit(pe, dev, &next, INT64_MAX, 0));
    CHECK(elapsed_us(t0) >= 10000);
    CHECK(pthread_join(helper, NULL) == 0);
    CHECK_OK(dpdpu_task_wait(pe, &next, INT64_MAX));
    CHECK_OK(dpdpu_task_wait(pe, &gated, INT64_MAX / 1000 + 1));
    CHECK_RC(dpdpu_pe_wait(pe, INT64_MAX, 0), 2);
    CHECK_RC(dpdpu_pe_progress(pe, done, 4), 2);

    for (int i = 0; i < 3; i++) {
        int64_t forever[] = {-1, INT64_MAX, INT64_MAX / 1000 + 1};
        d = (struct delayed){pe, 20000, 0};
        CHECK(pthread_create(&helper, NULL, delayed_main, &d) == 0);
        t0 = t_now_ns();
        CHECK_RC(dpdpu_pe_wait(pe, forever[i], i == 2 ? INT64_MAX : 0), 0); /* kicked */
        CHECK(elapsed_us(t0) >= 10000);
        CHECK(pthread_join(helper, NULL) == 0);
    }
    CHECK_OK(dpdpu_dev_close(dev, 1));
    dpdpu_dev_release(dev);
    CHECK_OK(dpdpu_pe_destroy(pe));
}

int main(void)
{
    printf("stress_device\n");
    RUN(timeout_convention);
    RUN(submitters_and_poller);
    RUN(helping_worker);
    RUN(close_races_submitters);
    RUN(device_memory);
    return 0;
}
