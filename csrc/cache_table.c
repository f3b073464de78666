/*
 * cache_table.c - the DDS cache table (see dpdpu_cache.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dpdpu_cache.h"

struct cache_slot {
    uint8_t used;
    uint8_t key_len;
    uint8_t key[DPDPU_CACHE_KEY_MAX];
    struct dpdpu_cache_entry entry;
};

struct cache_bucket {
    pthread_mutex_t lock;
    uint32_t used; /* occupied slots, so that inserts can pick the emptier bucket */
    struct cache_slot slots[DPDPU_CACHE_BUCKET_SLOTS];
};

struct dpdpu_cache {
    uint64_t capacity;
    uint64_t count; /* __atomic: reserved before a slot is taken (reserve_entry) */
    uint64_t mask;
    struct cache_bucket *buckets;
};

/* FNV-1a with a seed, finished with a 64-bit mixer so that the two bucket
 * choices are independent even for keys differing in one byte. */
static uint64_t hash_key(const uint8_t *key, size_t len, uint64_t seed)
{
    uint64_t h = 1469598103934665603ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= key[i];
        h *= 1099511628211ULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static int key_ok(const void *key, size_t key_len)
{
    return key != NULL && key_len > 0 && key_len <= DPDPU_CACHE_KEY_MAX;
}

int dpdpu_cache_create(uint32_t capacity, struct dpdpu_cache **out)
{
    if (out == NULL || capacity == 0 || capacity > DPDPU_CACHE_MAX_CAPACITY)
        return DPDPU_ERR_INVALID_ARGUMENT;
    /* Twice the slots the capacity needs keeps the chance of two full
     * buckets negligible below capacity. */
    uint64_t want = ((uint64_t)capacity * 2 + DPDPU_CACHE_BUCKET_SLOTS - 1) / DPDPU_CACHE_BUCKET_SLOTS;
    uint64_t nbuckets = 2;
    while (nbuckets < want)
        nbuckets <<= 1;
    struct dpdpu_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return DPDPU_ERR_NO_MEMORY;
    c->buckets = calloc(nbuckets, sizeof(*c->buckets));
    if (c->buckets == NULL) {
        free(c);
        return DPDPU_ERR_NO_MEMORY;
    }
    for (uint64_t i = 0; i < nbuckets; i++)
        pthread_mutex_init(&c->buckets[i].lock, NULL);
    c->capacity = capacity;
    c->mask = nbuckets - 1;
    *out = c;
    return DPDPU_OK;
}

void dpdpu_cache_free(struct dpdpu_cache *cache)
{
    if (cache == NULL)
        return;
    for (uint64_t i = 0; i <= cache->mask; i++)
        pthread_mutex_destroy(&cache->buckets[i].lock);
    free(cache->buckets);
    free(cache);
}

/* The key's two buckets, locked in index order (one lock if they coincide). */
static void lock_pair(struct dpdpu_cache *c, const void *key, size_t key_len, uint64_t *a, uint64_t *b)
{
    uint64_t i = hash_key(key, key_len, 0) & c->mask;
    uint64_t j = hash_key(key, key_len, 0x9e3779b97f4a7c15ULL) & c->mask;
    *a = i < j ? i : j;
    *b = i < j ? j : i;
    pthread_mutex_lock(&c->buckets[*a].lock);
    if (*b != *a)
        pthread_mutex_lock(&c->buckets[*b].lock);
}

static void unlock_pair(struct dpdpu_cache *c, uint64_t a, uint64_t b)
{
    if (b != a)
        pthread_mutex_unlock(&c->buckets[b].lock);
    pthread_mutex_unlock(&c->buckets[a].lock);
}

static struct cache_slot *find(struct cache_bucket *bucket, const void *key, size_t key_len)
{
    for (int s = 0; s < DPDPU_CACHE_BUCKET_SLOTS; s++) {
        struct cache_slot *slot = &bucket->slots[s];
        if (slot->used && slot->key_len == key_len && memcmp(slot->key, key, key_len) == 0)
            return slot;
    }
    return NULL;
}

static struct cache_slot *find_pair(struct dpdpu_cache *c, uint64_t a, uint64_t b, const void *key, size_t key_len,
                                    struct cache_bucket **home)
{
    struct cache_slot *slot = find(&c->buckets[a], key, key_len);
    *home = &c->buckets[a];
    if (slot == NULL && b != a) {
        slot = find(&c->buckets[b], key, key_len);
        *home = &c->buckets[b];
    }
    return slot;
}

/* Count one more entry unless the table is full.  The count never goes past
 * the capacity, even for a moment, so dpdpu_cache_count() never reports more. */
static int reserve_entry(struct dpdpu_cache *c)
{
    uint64_t n = __atomic_load_n(&c->count, __ATOMIC_RELAXED);

    do {
        if (n >= c->capacity)
            return 0;
    } while (!__atomic_compare_exchange_n(&c->count, &n, n + 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
    return 1;
}

int dpdpu_cache_put(struct dpdpu_cache *cache, const void *key, size_t key_len,
                    const struct dpdpu_cache_entry *entry)
{
    if (cache == NULL || entry == NULL || !key_ok(key, key_len))
        return DPDPU_ERR_INVALID_ARGUMENT;
    uint64_t a, b;
    struct cache_bucket *home;
    lock_pair(cache, key, key_len, &a, &b);
    struct cache_slot *slot = find_pair(cache, a, b, key, key_len, &home);
    if (slot != NULL) {
        slot->entry = *entry;
        unlock_pair(cache, a, b);
        return DPDPU_CACHE_UPDATED;
    }
    if (!reserve_entry(cache)) {
        unlock_pair(cache, a, b);
        return DPDPU_ERR_NO_DEVICE_MEMORY;
    }
    home = &cache->buckets[a];
    if (cache->buckets[b].used < home->used)
        home = &cache->buckets[b];
    if (home->used == DPDPU_CACHE_BUCKET_SLOTS) {
        __atomic_sub_fetch(&cache->count, 1, __ATOMIC_ACQ_REL);
        unlock_pair(cache, a, b);
        return DPDPU_ERR_NO_DEVICE_MEMORY;
    }
    for (int s = 0; s < DPDPU_CACHE_BUCKET_SLOTS; s++) {
        if (!home->slots[s].used) {
            slot = &home->slots[s];
            break;
        }
    }
    slot->used = 1;
    slot->key_len = (uint8_t)key_len;
    memcpy(slot->key, key, key_len);
    slot->entry = *entry;
    home->used++;
    unlock_pair(cache, a, b);
    return DPDPU_CACHE_INSERTED;
}

int dpdpu_cache_get(struct dpdpu_cache *cache, const void *key, size_t key_len, struct dpdpu_cache_entry *out)
{
    if (cache == NULL || out == NULL || !key_ok(key, key_len))
        return DPDPU_ERR_INVALID_ARGUMENT;
    uint64_t a, b;
    struct cache_bucket *home;
    lock_pair(cache, key, key_len, &a, &b);
    struct cache_slot *slot = find_pair(cache, a, b, key, key_len, &home);
    if (slot != NULL)
        *out = slot->entry;
    unlock_pair(cache, a, b);
    return slot != NULL;
}

int dpdpu_cache_delete(struct dpdpu_cache *cache, const void *key, size_t key_len)
{
    if (cache == NULL || !key_ok(key, key_len))
        return DPDPU_ERR_INVALID_ARGUMENT;
    uint64_t a, b;
    struct cache_bucket *home;
    lock_pair(cache, key, key_len, &a, &b);
    struct cache_slot *slot = find_pair(cache, a, b, key, key_len, &home);
    if (slot != NULL) {
        slot->used = 0;
        home->used--;
        __atomic_sub_fetch(&cache->count, 1, __ATOMIC_ACQ_REL);
    }
    unlock_pair(cache, a, b);
    return slot != NULL;
}

uint64_t dpdpu_cache_count(const struct dpdpu_cache *cache)
{
    return cache == NULL ? 0 : __atomic_load_n(&cache->count, __ATOMIC_ACQUIRE);
}

uint64_t dpdpu_cache_capacity(const struct dpdpu_cache *cache)
{
    return cache == NULL ? 0 : cache->capacity;
}
