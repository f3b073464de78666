/*
 * stress_ring.c - the shared-memory ring between two threads: every way of
 * sending against every way of receiving on a small ring (so both sides
 * wrap, fill up and sleep on the doorbell) with a third thread watching
 * their counters, closes from another thread, and the timeout convention.
 */
#include "dpdpu_ring.h"
#include "harness.h"

#define MESSAGES 6000
#define BULK_LEN 20000u
#define MAX_LEN (BULK_LEN + 64)

/* Message seq: its length, and bytes a reader can check. */
static uint64_t msg_len(uint64_t seq, uint64_t max_msg)
{
    if (seq % 97 == 5)
        return BULK_LEN + seq % 64; /* beyond one record: sent in bulk */
    return seq * 131 % (max_msg + 1);
}

static void make_msg(uint8_t *buf, uint64_t seq, uint64_t len)
{
    t_fill(buf, len, seq);
}

struct pair {
    struct dpdpu_ring *prod;
    struct dpdpu_ring *cons;
    uint64_t max_msg;
    uint64_t received;
    int done; /* __atomic: both ends finished */
};

/* Another thread watching both ends while they work. */
static void *watcher_main(void *arg)
{
    struct pair *p = arg;
    struct dpdpu_ring_stats prod, cons;

    while (!__atomic_load_n(&p->done, __ATOMIC_ACQUIRE)) {
        CHECK_OK(dpdpu_ring_stats(p->prod, &prod));
        CHECK_OK(dpdpu_ring_stats(p->cons, &cons));
        CHECK(prod.role == DPDPU_RING_PRODUCER && cons.role == DPDPU_RING_CONSUMER);
        CHECK(prod.used <= prod.capacity && cons.used <= cons.capacity);
        t_sleep_us(50);
    }
    return NULL;
}

static void *producer_main(void *arg)
{
    struct pair *p = arg;
    static uint8_t packed[8 * 4096];
    uint8_t *msg = malloc(MAX_LEN);
    uint8_t *batch[8];
    uint64_t seq = 0;

    for (int i = 0; i < 8; i++)
        batch[i] = malloc(p->max_msg);
    while (seq < MESSAGES) {
        uint64_t len = msg_len(seq, p->max_msg);
        uint32_t how = (uint32_t)(seq % 4);

        if (len > p->max_msg) {
            uint64_t done = 0;
            make_msg(msg, seq, len);
            CHECK_OK(dpdpu_ring_send_bulk(p->prod, msg, len, seq % 2 ? 0 : 512, -1, &done));
            CHECK(done == len);
            seq++;
        } else if (how == 0) {
            make_msg(msg, seq, len);
            CHECK_OK(dpdpu_ring_send(p->prod, msg, len, -1));
            seq++;
        } else if (how == 1) {
            void *at;
            make_msg(msg, seq, len);
            CHECK_OK(dpdpu_ring_reserve(p->prod, len, &at, -1));
            memcpy(at, msg, len);
            CHECK_RC(dpdpu_ring_commit(p->prod), 1);
            seq++;
        } else {
            /* A batch of messages that fit in a record, as iovecs or packed. */
            struct dpdpu_ring_iov iov[8];
            uint64_t lens[8], size = 0;
            uint32_t n = 0, sent = 0;
            while (n < 1 + seq % 8 && seq + n < MESSAGES && msg_len(seq + n, p->max_msg) <= p->max_msg &&
                   size + msg_len(seq + n, p->max_msg) <= sizeof(packed)) {
                lens[n] = msg_len(seq + n, p->max_msg);
                make_msg(batch[n], seq + n, lens[n]);
                iov[n] = (struct dpdpu_ring_iov){batch[n], lens[n]};
                memcpy(packed + size, batch[n], lens[n]);
                size += lens[n];
                n++;
            }
            if (how == 2)
                CHECK_OK(dpdpu_ring_send_batch(p->prod, iov, n, -1, &sent));
            else
                CHECK_OK(dpdpu_ring_send_packed(p->prod, packed, size, lens, n, -1, &sent));
            CHECK(sent == n);
            seq += n;
        }
    }
    CHECK_OK(dpdpu_ring_close(p->prod));
    for (int i = 0; i < 8; i++)
        free(batch[i]);
    free(msg);
    return NULL;
}

static void *consumer_main(void *arg)
{
    struct pair *p = arg;
    uint8_t *buf = malloc(MAX_LEN * 8);
    uint64_t seq = 0, len;
    int rc;

    for (;;) {
        uint32_t how = (uint32_t)(seq % 3);
        if (how == 0) {
            rc = dpdpu_ring_recv(p->cons, buf, MAX_LEN, &len, -1);
            if (rc == DPDPU_ERR_SHUTDOWN)
                break;
            CHECK_OK(rc);
            CHECK(len == msg_len(seq, p->max_msg) && t_matches(buf, len, seq));
            seq++;
        } else if (how == 1) {
            uint64_t lens[8], off = 0;
            uint32_t n = 0;
            rc = dpdpu_ring_recv_batch(p->cons, buf, MAX_LEN * 8, lens, 8, &n, -1);
            if (rc == DPDPU_ERR_SHUTDOWN)
                break;
            CHECK_OK(rc);
            CHECK(n >= 1);
            for (uint32_t i = 0; i < n; i++, seq++) {
                CHECK(lens[i] == msg_len(seq, p->max_msg) && t_matches(buf + off, lens[i], seq));
                off += lens[i];
            }
        } else {
            /* In place; a bulk message is taken span by span. */
            struct dpdpu_ring_view v;
            uint64_t got = 0;
            do {
                rc = dpdpu_ring_peek(p->cons, &v, -1);
                if (rc == DPDPU_ERR_SHUTDOWN)
                    goto out;
                CHECK_OK(rc);
                CHECK(v.offset == got && v.total == msg_len(seq, p->max_msg));
                memcpy(buf + v.offset, v.data, v.len);
                got += v.len;
                /* A message longer than the ring needs its room given back. */
                if (!(v.flags & DPDPU_RING_VIEW_LAST))
                    CHECK_RC(dpdpu_ring_release(p->cons), 1);
            } while (!(v.flags & DPDPU_RING_VIEW_LAST));
            CHECK_RC(dpdpu_ring_release(p->cons), 1);
            CHECK(got == v.total && t_matches(buf, got, seq));
            seq++;
        }
    }
out:
    p->received = seq;
    free(buf);
    return NULL;
}

static void producer_and_consumer(void)
{
    /* A small ring with both sides polling, then with both sleeping at once. */
    for (int round = 0; round < 2; round++) {
        struct pair p;
        pthread_t prod, cons, watcher;
        struct dpdpu_ring_stats st;

        memset(&p, 0, sizeof(p));
        CHECK_OK(dpdpu_ring_create(NULL, 8192, DPDPU_RING_CREATE_PRODUCER, &p.prod));
        CHECK_OK(dpdpu_ring_open_peer(p.prod, &p.cons));
        CHECK_OK(dpdpu_ring_stats(p.prod, &st));
        p.max_msg = st.max_message;
        if (round == 1) {
            CHECK_OK(dpdpu_ring_set_spin(p.prod, 0));
            CHECK_OK(dpdpu_ring_set_spin(p.cons, 0));
        }
        CHECK(pthread_create(&cons, NULL, consumer_main, &p) == 0);
        CHECK(pthread_create(&prod, NULL, producer_main, &p) == 0);
        CHECK(pthread_create(&watcher, NULL, watcher_main, &p) == 0);
        CHECK(pthread_join(prod, NULL) == 0);
        CHECK(pthread_join(cons, NULL) == 0);
        __atomic_store_n(&p.done, 1, __ATOMIC_RELEASE);
        CHECK(pthread_join(watcher, NULL) == 0);
        CHECK(p.received == MESSAGES);
        CHECK_OK(dpdpu_ring_stats(p.cons, &st));
        CHECK(st.messages == MESSAGES && st.used == 0 && st.peer == DPDPU_RING_PEER_CLOSED);
        dpdpu_ring_free(p.cons);
        dpdpu_ring_free(p.prod);
    }
}

/* ---- closes from another thread ------------------------------------------- */

struct blocked {
    struct dpdpu_ring *ring;
    int consumer;
    int rc;
};

static void *blocked_main(void *arg)
{
    struct blocked *b = arg;
    uint8_t buf[64] = {0};
    uint64_t len;

    if (b->consumer)
        b->rc = dpdpu_ring_recv(b->ring, buf, sizeof(buf), &len, -1);
    else
        b->rc = dpdpu_ring_send(b->ring, buf, sizeof(buf), -1);
    return NULL;
}

static void fill(struct dpdpu_ring *prod)
{
    uint8_t buf[64] = {0};
    int rc;
    while ((rc = dpdpu_ring_send(prod, buf, sizeof(buf), 0)) == DPDPU_OK)
        ;
    CHECK_RC(rc, DPDPU_ERR_AGAIN);
}

static void closes_end_waits(void)
{
    /* Which handle is closed under a blocked thread: its own, or its peer's. */
    for (int c = 0; c < 4; c++) {
        struct dpdpu_ring *prod, *cons;
        struct blocked b;
        pthread_t thread;
        int consumer = c % 2, own = c / 2;

        CHECK_OK(dpdpu_ring_create(NULL, 4096, DPDPU_RING_CREATE_CONSUMER, &cons));
        CHECK_OK(dpdpu_ring_open_peer(cons, &prod));
        if (!consumer)
            fill(prod);
        b = (struct blocked){consumer ? cons : prod, consumer, 1};
        CHECK(pthread_create(&thread, NULL, blocked_main, &b) == 0);
        t_sleep_us(20000);
        CHECK_OK(dpdpu_ring_close(own ? b.ring : consumer ? prod : cons));
        CHECK(pthread_join(thread, NULL) == 0);
        CHECK_RC(b.rc, DPDPU_ERR_SHUTDOWN);
        dpdpu_ring_free(prod);
        dpdpu_ring_free(cons);
    }
}

/* ---- a batch receive that finds padding, then a bulk message -------------- */

struct batch_receiver {
    struct dpdpu_ring *cons;
    uint8_t *buf;
    uint64_t cap;
    uint64_t lens[8];
    uint32_t n;
    int rc;
};

static void *batch_receiver_main(void *arg)
{
    struct batch_receiver *r = arg;
    r->rc = dpdpu_ring_recv_batch(r->cons, r->buf, r->cap, r->lens, 8, &r->n, -1);
    return NULL;
}

/* The receive steps over padding at the end of the data area, finds nothing
 * more, gives the padding back and sleeps; a bulk message then arrives, which
 * a batch receive hands to the single-message path.  That path must start
 * after the padding: the producer is already writing the next lap there. */
static void padding_then_bulk(void)
{
    enum { CAP = 4096, SMALL = 56, N_SMALL = (CAP - 64) / 64, BULK = 3 * 1984 + 100 };
    struct dpdpu_ring *prod, *cons;
    struct batch_receiver r;
    pthread_t thread;
    uint8_t small[SMALL], *bulk = malloc(BULK);
    uint64_t len, done = 0;

    CHECK_OK(dpdpu_ring_create(NULL, CAP, DPDPU_RING_CREATE_PRODUCER, &prod));
    CHECK_OK(dpdpu_ring_open_peer(prod, &cons));
    /* 64-byte records up to 64 bytes before the end, then a bulk message that
     * cannot start there: padding is published alone, the message waits. */
    for (int i = 0; i < N_SMALL; i++) {
        t_fill(small, SMALL, (uint64_t)i);
        CHECK_OK(dpdpu_ring_send(prod, small, SMALL, 0));
    }
    memset(bulk, 0xff, BULK); /* read as a record header, these bytes are corrupt */
    CHECK_RC(dpdpu_ring_send_bulk(prod, bulk, BULK, 0, 0, &done), DPDPU_ERR_AGAIN);
    CHECK(done == 0);
    for (int i = 0; i < N_SMALL; i++) {
        CHECK_OK(dpdpu_ring_recv(cons, small, SMALL, &len, 0));
        CHECK(len == SMALL && t_matches(small, SMALL, (uint64_t)i));
    }
    r = (struct batch_receiver){.cons = cons, .buf = malloc(BULK), .cap = BULK, .rc = 1};
    CHECK(pthread_create(&thread, NULL, batch_receiver_main, &r) == 0);
    t_sleep_us(20000);
    CHECK_OK(dpdpu_ring_send_bulk(prod, bulk, BULK, 0, -1, &done));
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK_OK(r.rc);
    CHECK(r.n == 1 && r.lens[0] == BULK && memcmp(r.buf, bulk, BULK) == 0);
    free(r.buf);
    free(bulk);
    dpdpu_ring_free(cons);
    dpdpu_ring_free(prod);
}

/* ---- timeouts: negative no limit, 0 do not block, positive a bound --------- */

struct late_sender {
    struct dpdpu_ring *prod;
    uint64_t delay_us;
};

static void *late_sender_main(void *arg)
{
    struct late_sender *s = arg;
    t_sleep_us(s->delay_us);
    CHECK_OK(dpdpu_ring_send(s->prod, "late", 4, -1));
    return NULL;
}

static void timeout_convention(void)
{
    struct dpdpu_ring *prod, *cons;
    struct late_sender s;
    pthread_t thread;
    uint8_t buf[64];
    uint64_t len, t0;

    CHECK_OK(dpdpu_ring_create(NULL, 4096, DPDPU_RING_CREATE_PRODUCER, &prod));
    CHECK_OK(dpdpu_ring_open_peer(prod, &cons));
    CHECK_RC(dpdpu_ring_recv(cons, buf, sizeof(buf), &len, 0), DPDPU_ERR_AGAIN);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_ring_recv(cons, buf, sizeof(buf), &len, 2000), DPDPU_ERR_TIMEOUT);
    CHECK(t_now_ns() - t0 >= 2000000);
    for (int i = 0; i < 2; i++) {
        s = (struct late_sender){prod, 20000};
        CHECK(pthread_create(&thread, NULL, late_sender_main, &s) == 0);
        CHECK_OK(dpdpu_ring_recv(cons, buf, sizeof(buf), &len, i ? INT64_MAX : INT64_MAX / 1000 + 1));
        CHECK(len == 4 && memcmp(buf, "late", 4) == 0);
        CHECK(pthread_join(thread, NULL) == 0);
    }
    fill(prod);
    t0 = t_now_ns();
    CHECK_RC(dpdpu_ring_send(prod, buf, sizeof(buf), 2000), DPDPU_ERR_TIMEOUT);
    CHECK(t_now_ns() - t0 >= 2000000);
    dpdpu_ring_free(cons);
    dpdpu_ring_free(prod);
}

int main(void)
{
    printf("stress_ring\n");
    RUN(timeout_convention);
    RUN(producer_and_consumer);
    RUN(closes_end_waits);
    RUN(padding_then_bulk);
    return 0;
}
