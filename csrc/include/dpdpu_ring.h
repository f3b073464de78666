/*
 * dpdpu_ring.h - the host<->DPU channel: a lock-free single-producer,
 * single-consumer ring in shared memory.
 *
 * A ring is a header followed by a data area of `capacity` bytes (a power of
 * two) in a memory region both sides map: a named shared-memory object
 * (/dev/shm/NAME, or a file path when NAME starts with '/') so that another
 * process can attach to it, or anonymous shared memory for use inside one
 * process.  The process that creates a ring takes one role (producer or
 * consumer); the one that attaches takes the other.
 *
 * Two ways to move data, on the same ring:
 *
 * - Message mode: each message is one record (an 8-byte header and its
 *   payload, padded to 8 bytes) stored contiguously; a record that would
 *   straddle the end of the data area is preceded by a padding record, so
 *   a consumer always sees a message as one span it can read in place.
 *   A message may take up to half the data area (so that it always fits
 *   in an empty ring, whatever padding precedes it).
 *   Records reserved one after another are published together by a single
 *   store of the producer position (one doorbell for a batch); the consumer
 *   likewise peeks several records and frees their space with one release.
 *
 * - Bulk mode: a payload of any size is copied straight into the data area
 *   in chunks, each published as soon as it is written, so the consumer
 *   copies chunk k out while the producer writes chunk k+1.  The consumer
 *   receives the whole payload as one message.
 *
 * Positions are 64-bit byte counters that never wrap; each side's position
 * lives on its own cache line and is published with a release store and read
 * with an acquire load.  No lock is taken on any path.
 *
 * Waiting: a side that finds the ring empty (or full) polls for a short time
 * (see dpdpu_ring_set_spin()), then announces that it sleeps and sleeps on a
 * futex word in the shared header; the other side makes the wake-up system
 * call only when it sees that announcement.  Every wait is bounded by the
 * caller's timeout and by slices of DPDPU_RING_SLICE_US, after each of which
 * the sleeper checks whether its peer process still exists.  A peer that
 * closed its end, or whose process died, ends the wait with
 * DPDPU_ERR_SHUTDOWN; a consumer first receives everything the producer
 * committed.  A process is judged alive from /proc (a zombie counts as dead,
 * and its start time guards against a reused id), so both ends must share a
 * PID namespace.
 *
 * A handle is used by one thread at a time, except dpdpu_ring_close(), which
 * any thread may call to end the waits of another, and dpdpu_ring_stats(),
 * which any thread may call to watch it.
 */
#ifndef DPDPU_RING_H
#define DPDPU_RING_H

#include "dpdpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */

/** Smallest and largest data area of a ring, in bytes. */
#define DPDPU_RING_MIN_CAPACITY 4096
#define DPDPU_RING_MAX_CAPACITY 1073741824
/** Longest ring name (a /dev/shm name or an absolute file path). */
#define DPDPU_RING_NAME_MAX 255
/** Bytes every record takes on top of its payload (before 8-byte padding). */
#define DPDPU_RING_RECORD_HEADER 8
/** Longest a sleeping side waits before checking that its peer is alive. */
#define DPDPU_RING_SLICE_US 20000
/** Default time a side polls before it sleeps. */
#define DPDPU_RING_DEFAULT_SPIN_US 50

/** Flags of dpdpu_ring_create(). */
enum dpdpu_ring_flags {
    /** The creator produces; the process that attaches consumes. */
    DPDPU_RING_CREATE_PRODUCER = 0,
    /** The creator consumes; the process that attaches produces. */
    DPDPU_RING_CREATE_CONSUMER = 1
};

/** Which end of a ring a handle is. */
enum dpdpu_ring_role {
    DPDPU_RING_PRODUCER = 0,
    DPDPU_RING_CONSUMER = 1
};

/** What a handle knows of the other end. */
enum dpdpu_ring_peer {
    DPDPU_RING_PEER_NONE = 0,   /**< nobody has attached to the other end yet */
    DPDPU_RING_PEER_ALIVE = 1,
    DPDPU_RING_PEER_CLOSED = 2, /**< the peer closed its end */
    DPDPU_RING_PEER_DEAD = 3    /**< the peer's process ended without closing */
};

/** Flags of struct dpdpu_ring_view. */
enum dpdpu_ring_view_flags {
    /** The span starts a message (offset is 0). */
    DPDPU_RING_VIEW_FIRST = 1,
    /** The span ends a message; a whole message in one span has both flags. */
    DPDPU_RING_VIEW_LAST = 2
};

/** One message to send: len bytes at data. */
struct dpdpu_ring_iov {
    const void *data;
    uint64_t len;
};

/**
 * A span of a message inside the ring, read in place (dpdpu_ring_peek()).
 * A message sent in message mode is one span; a bulk message is a sequence
 * of spans, the first flagged FIRST and the last LAST.
 */
struct dpdpu_ring_view {
    const void *data;  /**< the bytes, valid until dpdpu_ring_release() or _rewind() */
    uint64_t len;      /**< bytes at data */
    uint64_t total;    /**< length of the whole message */
    uint64_t offset;   /**< where the span starts within the message */
    uint32_t flags;    /**< enum dpdpu_ring_view_flags */
};

/** Counters and state of one end of a ring. */
struct dpdpu_ring_stats {
    uint64_t messages;      /**< messages committed (producer) or received (consumer) */
    uint64_t bytes;         /**< payload bytes of those messages */
    uint64_t batches;       /**< producer: publications of its position; consumer: releases */
    uint64_t waits;         /**< times this end slept on the doorbell */
    uint64_t wakeups;       /**< wake-up calls this end made for its peer */
    uint64_t capacity;      /**< bytes of the data area */
    uint64_t max_message;   /**< largest message dpdpu_ring_send() takes: capacity / 2 - 8 */
    uint64_t used;          /**< bytes published and not yet released */
    uint64_t partial_total; /**< length of a bulk message left half done by a timeout (else 0) */
    uint64_t partial_done;  /**< bytes of it already sent or received */
    uint32_t role;          /**< enum dpdpu_ring_role */
    int32_t peer;           /**< enum dpdpu_ring_peer */
    int32_t peer_pid;       /**< process id of the peer (0 before it attaches) */
    int32_t closed;         /**< non-zero once this end is closed */
};

struct dpdpu_ring;

/* --- lifecycle ----------------------------------------------------------- */

/**
 * Create a ring and take one end of it.
 * \param name NULL for anonymous memory (reachable only through
 *        dpdpu_ring_open_peer()), a name for /dev/shm/NAME (no '/'), or an
 *        absolute file path; the object must not exist yet
 * \param capacity data area in bytes, rounded up to a power of two, within
 *        [DPDPU_RING_MIN_CAPACITY, DPDPU_RING_MAX_CAPACITY]
 * \param flags DPDPU_RING_CREATE_PRODUCER or DPDPU_RING_CREATE_CONSUMER
 * \param out receives the handle
 * \return 0, INVALID_ARGUMENT (bad name, capacity or flags, or the object
 *         cannot be created), IN_USE if the name exists, NO_MEMORY
 */
int dpdpu_ring_create(const char *name, uint64_t capacity, uint32_t flags, struct dpdpu_ring **out);

/**
 * Attach to a ring another process (or this one) created, taking the end
 * its creator did not take.  The header is validated before use.
 * \param out receives the handle
 * \return 0, INVALID_ARGUMENT (bad name, or no such object), CORRUPT_DATA
 *         (not a ring, another layout version, or an inconsistent header),
 *         IN_USE if the other end is already taken, NO_MEMORY
 */
int dpdpu_ring_attach(const char *name, struct dpdpu_ring **out);

/**
 * Open the other end of a ring in this process, sharing the mapping (the
 * only way to reach an anonymous ring).
 * \return 0, INVALID_ARGUMENT, IN_USE if the other end is taken, NO_MEMORY
 */
int dpdpu_ring_open_peer(struct dpdpu_ring *ring, struct dpdpu_ring **out);

/**
 * Close this end: the peer gets SHUTDOWN (a consumer after it has received
 * everything committed), waits of this handle in other threads end with
 * SHUTDOWN, and later calls on it fail with SHUTDOWN.  Records reserved and
 * not committed are dropped.  The creator's close also removes the name, so
 * nobody new can attach; ends already attached keep their mapping.  Safe to
 * call from any thread, and more than once.
 * \return 0, or INVALID_ARGUMENT if ring is NULL
 */
int dpdpu_ring_close(struct dpdpu_ring *ring);

/**
 * Close (if needed) and free a handle, unmapping the ring once no handle of
 * this process uses it.  No other call on the handle may be in progress.
 * A handle inherited through fork() is only unmapped: the ring's state is
 * left to the process that opened it.
 */
void dpdpu_ring_free(struct dpdpu_ring *ring);

/**
 * Remove a ring's name (a ring left behind by a process that died).
 * \return 0, INVALID_ARGUMENT for a bad name or one that does not exist
 */
int dpdpu_ring_unlink(const char *name);

/**
 * Set how long this end polls before sleeping when it has to wait.
 * \param spin_us microseconds (0: sleep at once)
 * \return 0, INVALID_ARGUMENT
 */
int dpdpu_ring_set_spin(struct dpdpu_ring *ring, int64_t spin_us);

/**
 * Read this end's counters and what it knows of its peer (checking, for a
 * peer that has not closed, whether its process still exists).  Safe from
 * any thread; counters read while another thread uses the handle may be a
 * call behind.
 * \return 0, INVALID_ARGUMENT
 */
int dpdpu_ring_stats(struct dpdpu_ring *ring, struct dpdpu_ring_stats *out);

/* --- producer -------------------------------------------------------------- */

/*
 * Timeouts, here and below, are in microseconds: 0 tries once and returns
 * AGAIN when it would have to wait; a negative value waits without limit
 * (still ending with SHUTDOWN when the peer closes or dies); otherwise the
 * call returns TIMEOUT when the time passes.
 */

/**
 * Reserve room for one message of len bytes and get where to write it.
 * Nothing is visible to the consumer until dpdpu_ring_commit(); reserve
 * several records and commit once to publish a batch.  A reservation that
 * has to wait for room first commits the records reserved before it, so
 * write each record before reserving the next.
 * \param out receives the address of the payload (8-byte aligned)
 * \return 0, INVALID_ARGUMENT (not the producer end), TOO_LARGE (len
 *         above max_message), AGAIN, TIMEOUT, SHUTDOWN (either end closed,
 *         or the consumer died)
 */
int dpdpu_ring_reserve(struct dpdpu_ring *ring, uint64_t len, void **out, int64_t timeout_us);

/**
 * Publish every record reserved since the last commit with one store, and
 * wake the consumer if it sleeps.
 * \return the number of messages published, or INVALID_ARGUMENT, SHUTDOWN
 */
int dpdpu_ring_commit(struct dpdpu_ring *ring);

/**
 * Send one message: reserve, copy, commit.
 * \return 0, INVALID_ARGUMENT, TOO_LARGE, AGAIN, TIMEOUT, SHUTDOWN
 */
int dpdpu_ring_send(struct dpdpu_ring *ring, const void *data, uint64_t len, int64_t timeout_us);

/**
 * Send n messages, publishing them in batches (at least every eighth of the
 * capacity, and whenever the ring is full).  Every message is checked
 * before any is sent; the timeout bounds the whole call, and when it
 * passes, the messages before the one that found no room are sent.
 * \param sent receives how many messages were sent (may be NULL)
 * \return 0, INVALID_ARGUMENT, TOO_LARGE (a message above max_message;
 *         nothing sent), AGAIN, TIMEOUT, SHUTDOWN
 */
int dpdpu_ring_send_batch(struct dpdpu_ring *ring, const struct dpdpu_ring_iov *iov, uint32_t n,
                          int64_t timeout_us, uint32_t *sent);

/**
 * dpdpu_ring_send_batch() for messages stored back to back in size bytes
 * at data: message i is the lens[i] bytes following message i - 1.
 * \return as dpdpu_ring_send_batch(); INVALID_ARGUMENT (nothing sent) also
 *         when the lengths do not add up to size
 */
int dpdpu_ring_send_packed(struct dpdpu_ring *ring, const void *data, uint64_t size, const uint64_t *lens,
                           uint32_t n, int64_t timeout_us, uint32_t *sent);

/**
 * Send one message of any length in bulk mode: chunks of at most `chunk`
 * bytes are copied into the data area and published one by one.  A message
 * that fits in one chunk is sent as an ordinary message.
 *
 * When the call times out in the middle of a message, the ring keeps the
 * part already sent and the next call of this function with the same data
 * and length continues it; any other send (or dpdpu_ring_abort_bulk())
 * first tells the consumer to drop the part it has.
 * \param chunk largest chunk in bytes, rounded down to a multiple of 64
 *        (0: a quarter of the capacity, at most 1 MiB); limited to
 *        max_message - 56.  Each chunk's data starts on a 64-byte boundary
 *        of the ring, so views of it (dpdpu_ring_peek()) are aligned.
 * \param done receives the bytes of the message sent so far (may be NULL)
 * \return 0, INVALID_ARGUMENT, AGAIN, TIMEOUT, SHUTDOWN
 */
int dpdpu_ring_send_bulk(struct dpdpu_ring *ring, const void *data, uint64_t len, uint64_t chunk,
                         int64_t timeout_us, uint64_t *done);

/**
 * Abandon a bulk message left half sent by a timeout: the consumer's
 * receive of it ends with TRUNCATED_DATA.  Does nothing if none is pending.
 * \return 0, INVALID_ARGUMENT, AGAIN, TIMEOUT, SHUTDOWN
 */
int dpdpu_ring_abort_bulk(struct dpdpu_ring *ring, int64_t timeout_us);

/* --- consumer -------------------------------------------------------------- */

/**
 * Take the next span of the next message without copying it.  The bytes
 * stay valid, and their room stays taken, until dpdpu_ring_release();
 * peek several times and release once to consume a batch.  Release before
 * waiting for more when the producer may need the room.
 * \return 0, INVALID_ARGUMENT (not the consumer end), AGAIN, TIMEOUT,
 *         SHUTDOWN (the producer closed or died and everything it committed
 *         has been taken), TRUNCATED_DATA (the producer abandoned, or died
 *         during, the bulk message being received; reported once),
 *         CORRUPT_DATA (a record that breaks the format; it is skipped)
 */
int dpdpu_ring_peek(struct dpdpu_ring *ring, struct dpdpu_ring_view *view, int64_t timeout_us);

/**
 * Free the room of every span peeked so far and wake the producer if it
 * waits for room.
 * \return the number of spans released, or INVALID_ARGUMENT
 */
int dpdpu_ring_release(struct dpdpu_ring *ring);

/**
 * Put back every span peeked since the last release: the next peek returns
 * the first of them again.
 * \return 0, INVALID_ARGUMENT
 */
int dpdpu_ring_rewind(struct dpdpu_ring *ring);

/**
 * Receive one message (either mode) into buf, releasing what was peeked
 * before.  A bulk message is copied and released chunk by chunk.
 *
 * When a bulk message times out half received, its chunks so far are in
 * buf and stats.partial_done says how many bytes; the next receive
 * continues the message into the buffer it is given, which must hold that
 * beginning.
 * \param len receives the message length; with BUFFER_TOO_SMALL the size
 *        needed (the message stays in the ring)
 * \return 0, INVALID_ARGUMENT, BUFFER_TOO_SMALL, AGAIN, TIMEOUT, SHUTDOWN,
 *         TRUNCATED_DATA, CORRUPT_DATA
 */
int dpdpu_ring_recv(struct dpdpu_ring *ring, void *buf, uint64_t cap, uint64_t *len, int64_t timeout_us);

/**
 * Receive up to max messages, packed back to back into buf, waiting (up to
 * the timeout) only for the first.  Later messages are taken while they are
 * already published and fit; everything taken is released once.  A bulk
 * message is received only as the first, and then alone.
 * \param lens receives the length of each message (at least max entries);
 *        with BUFFER_TOO_SMALL, lens[0] is the size the first message needs
 * \param n receives the number of messages
 * \return 0, INVALID_ARGUMENT, BUFFER_TOO_SMALL, AGAIN, TIMEOUT, SHUTDOWN,
 *         TRUNCATED_DATA, CORRUPT_DATA (all as dpdpu_ring_recv())
 */
int dpdpu_ring_recv_batch(struct dpdpu_ring *ring, void *buf, uint64_t cap, uint64_t *lens, uint32_t max,
                          uint32_t *n, int64_t timeout_us);

/* cffi:end */

#ifdef __cplusplus
}
#endif

#endif /* DPDPU_RING_H */
