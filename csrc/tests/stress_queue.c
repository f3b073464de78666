/*
 * stress_queue.c - the queue engine's two plug-ins at once: tasks on a
 * device's engine that do block I/O on a bdev and wait for it from the
 * engine's worker threads (which then run other queued tasks while they
 * wait), with pollers taking both kinds of completion, submitters on
 * several threads, and a bdev closed under them.
 */
#include "dpdpu_bdev.h"
#include "harness.h"

#define BLOCK 4096u
#define SUBMITTERS 3
#define TASKS_PER_SUBMITTER 64
#define TASKS (SUBMITTERS * TASKS_PER_SUBMITTER)

/* One task's work: write its block, wait, read it back, wait, compare. */
struct job {
    struct dpdpu_task task;
    struct dpdpu_bdev *b;
    struct dpdpu_bdev_io write;
    struct dpdpu_bdev_io read;
    uint8_t *out;
    uint8_t *in;
    uint64_t block;
    int task_collected; /* __atomic: times the pe poller took the task */
    int ios_collected;  /* __atomic: times the bdev poller took one of its I/Os */
    int ios_submitted;
};

static int callback(struct dpdpu_task *task)
{
    struct job *j = (struct job *)(uintptr_t)task->user_data;
    int rc;

    t_fill(j->out, BLOCK, j->block);
    j->write = (struct dpdpu_bdev_io){.type = DPDPU_BDEV_IO_WRITE, .offset = j->block * BLOCK, .length = BLOCK,
                                      .buf = j->out, .user_data = (uint64_t)(uintptr_t)j};
    if ((rc = dpdpu_bdev_submit(j->b, &j->write, -1)) != DPDPU_OK)
        return rc;
    j->ios_submitted++;
    /* On a worker with tasks queued behind this one: the wait runs them. */
    CHECK_OK(dpdpu_bdev_io_wait(j->b, &j->write, -1));
    if (j->write.status != DPDPU_OK)
        return j->write.status;
    j->read = (struct dpdpu_bdev_io){.type = DPDPU_BDEV_IO_READ, .offset = j->block * BLOCK, .length = BLOCK,
                                     .buf = j->in, .user_data = (uint64_t)(uintptr_t)j};
    if ((rc = dpdpu_bdev_submit(j->b, &j->read, -1)) != DPDPU_OK)
        return rc;
    j->ios_submitted++;
    CHECK_OK(dpdpu_bdev_io_wait(j->b, &j->read, INT64_MAX));
    if (j->read.status != DPDPU_OK)
        return j->read.status;
    return t_matches(j->in, BLOCK, j->block) ? DPDPU_OK : DPDPU_ERR_CORRUPT_DATA;
}

/* ---- pollers of both completion queues ------------------------------------ */

struct pollers {
    struct dpdpu_pe *pe;
    struct dpdpu_bdev *b;
    int stop; /* __atomic */
    uint64_t tasks_taken;
    uint64_t ios_taken;
    pthread_t pe_thread;
    pthread_t bdev_thread;
};

static void *pe_poller_main(void *arg)
{
    struct pollers *p = arg;
    struct dpdpu_task *done[16];

    for (;;) {
        int rc = dpdpu_pe_wait(p->pe, 2000, 100);
        CHECK(rc >= 0 || rc == DPDPU_ERR_TIMEOUT);
        int n = dpdpu_pe_progress(p->pe, done, 16);
        for (int i = 0; i < n; i++) {
            struct job *j = (struct job *)(uintptr_t)done[i]->user_data;
            CHECK(__atomic_load_n(&done[i]->done, __ATOMIC_ACQUIRE));
            __atomic_fetch_add(&j->task_collected, 1, __ATOMIC_ACQ_REL);
        }
        p->tasks_taken += (uint64_t)n;
        if (n == 0 && __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE) && dpdpu_pe_outstanding(p->pe) == 0)
            return NULL;
    }
}

static void *bdev_poller_main(void *arg)
{
    struct pollers *p = arg;
    struct dpdpu_bdev_io *done[16];
    struct dpdpu_bdev_stats st;

    for (;;) {
        int rc = dpdpu_bdev_wait(p->b, 2000, 0);
        CHECK(rc >= 0 || rc == DPDPU_ERR_TIMEOUT);
        int n = dpdpu_bdev_poll(p->b, done, 16);
        for (int i = 0; i < n; i++) {
            struct job *j = (struct job *)(uintptr_t)done[i]->user_data;
            CHECK(__atomic_load_n(&done[i]->done, __ATOMIC_ACQUIRE));
            __atomic_fetch_add(&j->ios_collected, 1, __ATOMIC_ACQ_REL);
        }
        p->ios_taken += (uint64_t)n;
        if (n == 0 && __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
            CHECK_OK(dpdpu_bdev_get_stats(p->b, &st));
            if (st.in_flight == 0 && st.completed == 0)
                return NULL;
        }
    }
}

static void pollers_start(struct pollers *p, struct dpdpu_pe *pe, struct dpdpu_bdev *b)
{
    memset(p, 0, sizeof(*p));
    p->pe = pe;
    p->b = b;
    CHECK(pthread_create(&p->pe_thread, NULL, pe_poller_main, p) == 0);
    CHECK(pthread_create(&p->bdev_thread, NULL, bdev_poller_main, p) == 0);
}

static void pollers_stop(struct pollers *p)
{
    __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
    dpdpu_pe_kick(p->pe);
    dpdpu_bdev_kick(p->b);
    CHECK(pthread_join(p->pe_thread, NULL) == 0);
    CHECK(pthread_join(p->bdev_thread, NULL) == 0);
}

/* ---- submitters ------------------------------------------------------------- */

struct submitter {
    struct dpdpu_pe *pe;
    struct dpdpu_dev *dev;
    struct job *jobs; /* TASKS_PER_SUBMITTER of them */
    int n;            /* tasks accepted */
};

static void *submitter_main(void *arg)
{
    struct submitter *s = arg;

    for (int i = 0; i < TASKS_PER_SUBMITTER; i++) {
        struct job *j = &s->jobs[i];
        int rc;

        memset(&j->task, 0, sizeof(j->task));
        j->task.op = DPDPU_OP_CALLBACK;
        j->task.user_data = (uint64_t)(uintptr_t)j;
        rc = dpdpu_task_submit(s->pe, s->dev, &j->task, -1, 0);
        if (rc == DPDPU_ERR_SHUTDOWN)
            break;
        CHECK_OK(rc);
        s->n++;
        /* Some submitters wait for their own tasks too, racing the poller. */
        if (i % 4 == 0)
            CHECK_OK(dpdpu_task_wait(s->pe, &j->task, -1));
    }
    return NULL;
}

static struct dpdpu_dev *open_dev(uint32_t workers, uint32_t depth)
{
    struct dpdpu_dev_cfg cfg;
    struct dpdpu_dev *dev;

    memset(&cfg, 0, sizeof(cfg));
    cfg.name = "queue";
    cfg.callback = callback;
    cfg.n_engines = 1;
    cfg.engines[0] = (struct dpdpu_engine_cfg){"arm", 1u << DPDPU_OP_CALLBACK, workers, depth, 0, 0};
    CHECK_OK(dpdpu_dev_open(&cfg, &dev));
    return dev;
}

static struct dpdpu_bdev *open_bdev(const char *dir, uint32_t flags, uint32_t depth, uint32_t workers)
{
    char path[512];
    struct dpdpu_bdev_cfg cfg;
    struct dpdpu_bdev *b;

    snprintf(path, sizeof(path), "%s/queue.bdev", dir);
    cfg = (struct dpdpu_bdev_cfg){path, BLOCK, DPDPU_BDEV_CREATE | flags, TASKS, depth, workers};
    CHECK_OK(dpdpu_bdev_open(&cfg, &b));
    return b;
}

/* One round: SUBMITTERS threads put tasks on one engine of `workers`
 * threads; each task writes and reads back its own block.  With close_after,
 * the bdev is closed once that many writes have completed: later I/O is
 * refused with SHUTDOWN, what was submitted completes. */
static void round_trip(const char *dir, uint32_t workers, uint32_t dev_depth, uint32_t bdev_flags,
                       uint32_t bdev_depth, uint64_t close_after)
{
    static struct job jobs[TASKS];
    struct submitter subs[SUBMITTERS];
    struct dpdpu_dev *dev = open_dev(workers, dev_depth);
    struct dpdpu_bdev *b = open_bdev(dir, bdev_flags, bdev_depth, 2);
    struct dpdpu_bdev_stats st;
    struct dpdpu_pe *pe;
    struct pollers p;
    pthread_t threads[SUBMITTERS];
    uint64_t tasks = 0, ios = 0, ok = 0;

    CHECK_OK(dpdpu_pe_create(&pe));
    memset(jobs, 0, sizeof(jobs));
    for (int i = 0; i < TASKS; i++) {
        jobs[i].b = b;
        jobs[i].block = (uint64_t)i;
        jobs[i].out = malloc(BLOCK);
        jobs[i].in = malloc(BLOCK);
        CHECK(jobs[i].out != NULL && jobs[i].in != NULL);
    }
    if (bdev_flags & DPDPU_BDEV_DIRECT) {
        struct dpdpu_bdev_info info;
        CHECK_OK(dpdpu_bdev_get_info(b, &info));
        for (int i = 0; i < TASKS && info.direct; i++) {
            free(jobs[i].out);
            free(jobs[i].in);
            CHECK(posix_memalign((void **)&jobs[i].out, 4096, BLOCK) == 0);
            CHECK(posix_memalign((void **)&jobs[i].in, 4096, BLOCK) == 0);
        }
    }
    pollers_start(&p, pe, b);
    for (int i = 0; i < SUBMITTERS; i++) {
        subs[i] = (struct submitter){pe, dev, &jobs[i * TASKS_PER_SUBMITTER], 0};
        CHECK(pthread_create(&threads[i], NULL, submitter_main, &subs[i]) == 0);
    }
    if (close_after) {
        do {
            sched_yield();
            CHECK_OK(dpdpu_bdev_get_stats(b, &st));
        } while (st.writes < close_after);
        CHECK_OK(dpdpu_bdev_close(b));
    }
    for (int i = 0; i < SUBMITTERS; i++)
        CHECK(pthread_join(threads[i], NULL) == 0);
    CHECK_OK(dpdpu_dev_close(dev, 1));
    pollers_stop(&p);

    for (int i = 0; i < SUBMITTERS; i++) {
        for (int k = 0; k < subs[i].n; k++) {
            struct job *j = &subs[i].jobs[k];
            CHECK(j->task.done && j->task_collected == 1);
            CHECK(j->ios_collected == j->ios_submitted);
            CHECK(j->task.status == DPDPU_OK || (close_after && j->task.status == DPDPU_ERR_SHUTDOWN));
            ok += j->task.status == DPDPU_OK;
            ios += (uint64_t)j->ios_submitted;
        }
        CHECK(subs[i].n == TASKS_PER_SUBMITTER);
        tasks += (uint64_t)subs[i].n;
    }
    CHECK(p.tasks_taken == tasks && p.ios_taken == ios);
    if (!close_after)
        CHECK(ok == TASKS);
    CHECK_OK(dpdpu_bdev_get_stats(b, &st));
    CHECK(st.reads + st.writes == ios && st.failed == 0 && st.in_flight == 0);
    CHECK(st.reads == ok);
    dpdpu_bdev_release(b);
    dpdpu_dev_release(dev);
    CHECK_OK(dpdpu_pe_destroy(pe));
    for (int i = 0; i < TASKS; i++) {
        free(jobs[i].out);
        free(jobs[i].in);
    }
}

static void tasks_doing_block_io(const char *dir)
{
    /* One worker: every task beyond the first runs only because a waiting
     * worker helps.  Then more workers than the bdev has, a small bdev queue
     * (submissions from workers wait for room), and direct I/O. */
    round_trip(dir, 1, 16, 0, 32, 0);
    round_trip(dir, 3, 64, 0, 2, 0);
    round_trip(dir, 2, 32, DPDPU_BDEV_DIRECT, 4, 0);
}

static void bdev_closed_under_tasks(const char *dir)
{
    for (int round = 0; round < 4; round++)
        round_trip(dir, 1 + (uint32_t)round % 2, 16, 0, 4, 4 + 12 * (uint64_t)round);
}

int main(void)
{
    char dir[256];

    printf("stress_queue\n");
    t_mkdtemp(dir, sizeof(dir));
    RUN(tasks_doing_block_io, dir);
    RUN(bdev_closed_under_tasks, dir);
    t_rmdir(dir);
    return 0;
}
