/*
 * dpdpu_cache.h - the DDS cache table: a fixed-capacity concurrent hash table
 * that maps a short byte-string key to where its value lives in a file.
 *
 * Layout: a power-of-two array of buckets of DPDPU_CACHE_BUCKET_SLOTS slots,
 * each bucket with its own mutex.  A key may live in either of two buckets
 * chosen by two independent hashes; an insert picks the emptier one.  With
 * the buckets sized for at most half the capacity per slot, a table below its
 * capacity practically never finds both buckets full, and no entry ever moves,
 * so an operation only needs the (at most two) locks of its key's buckets,
 * taken in index order.  Readers of different buckets never contend.
 *
 * The number of entries is bounded by the capacity given at creation; an
 * insert past it (or, very rarely, into two full buckets) fails with
 * DPDPU_ERR_NO_DEVICE_MEMORY and changes nothing.
 *
 * All functions may be called from any thread on the same table, except
 * dpdpu_cache_free().
 */
#ifndef DPDPU_CACHE_H
#define DPDPU_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "dpdpu.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cffi:begin */

/** Longest key, in bytes (keys of 1..DPDPU_CACHE_KEY_MAX bytes are accepted). */
#define DPDPU_CACHE_KEY_MAX 64
/** Slots per bucket. */
#define DPDPU_CACHE_BUCKET_SLOTS 8
/** Largest capacity a table accepts. */
#define DPDPU_CACHE_MAX_CAPACITY 16777216

/** dpdpu_cache_put() results that are not errors. */
enum {
    DPDPU_CACHE_INSERTED = 0,
    DPDPU_CACHE_UPDATED = 1
};

/** Where a cached value lives: a file (by id), an offset and a size. */
struct dpdpu_cache_entry {
    uint64_t version;
    uint64_t offset;
    uint32_t file;
    uint32_t size;
};

struct dpdpu_cache;

/**
 * Make a table for up to `capacity` entries (1..DPDPU_CACHE_MAX_CAPACITY).
 * \return 0, INVALID_ARGUMENT, NO_MEMORY
 */
int dpdpu_cache_create(uint32_t capacity, struct dpdpu_cache **out);

/** Free a table (no call may be in progress on it).  NULL is ignored. */
void dpdpu_cache_free(struct dpdpu_cache *cache);

/**
 * Insert `key`, or replace its entry if present.
 * \return DPDPU_CACHE_INSERTED, DPDPU_CACHE_UPDATED, INVALID_ARGUMENT (key
 *         length), NO_DEVICE_MEMORY (the table is full)
 */
int dpdpu_cache_put(struct dpdpu_cache *cache, const void *key, size_t key_len,
                    const struct dpdpu_cache_entry *entry);

/**
 * Look `key` up and copy its entry to `out`.
 * \return 1 (found), 0 (absent), INVALID_ARGUMENT
 */
int dpdpu_cache_get(struct dpdpu_cache *cache, const void *key, size_t key_len,
                    struct dpdpu_cache_entry *out);

/**
 * Remove `key`.
 * \return 1 (removed), 0 (absent), INVALID_ARGUMENT
 */
int dpdpu_cache_delete(struct dpdpu_cache *cache, const void *key, size_t key_len);

/** Entries in the table now. */
uint64_t dpdpu_cache_count(const struct dpdpu_cache *cache);

/** The capacity the table was made with. */
uint64_t dpdpu_cache_capacity(const struct dpdpu_cache *cache);

/* cffi:end */

#ifdef __cplusplus
}
#endif

#endif /* DPDPU_CACHE_H */
