/*
 * stress_cache.c - the cache table under threads that insert, update, look
 * up and delete overlapping keys, with more keys than the table holds.
 */
#include "dpdpu_cache.h"
#include "harness.h"

#define THREADS 4
#define KEYS 900
#define CAPACITY 512
#define OPS 40000

struct cache_args {
    struct dpdpu_cache *cache;
    uint64_t seed;
    uint64_t refused;
};

static int key_of(uint32_t k, char *key)
{
    return snprintf(key, 32, "key-%u-%s", k, k % 3 ? "x" : "a-longer-suffix");
}

static void *cache_main(void *arg)
{
    struct cache_args *a = arg;
    uint64_t x = a->seed;

    for (int i = 0; i < OPS; i++) {
        char key[32];
        struct dpdpu_cache_entry e;
        uint32_t k, op;
        int len, rc;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        k = (uint32_t)(x % KEYS);
        op = (uint32_t)(x >> 32) % 4;
        len = key_of(k, key);
        switch (op) {
        case 0:
        case 1:
            /* Every writer stores the key's own number, so any reader can
             * tell a torn or misplaced entry. */
            e = (struct dpdpu_cache_entry){k, (uint64_t)k * 4096, k % 7, k + 1};
            rc = dpdpu_cache_put(a->cache, key, (size_t)len, &e);
            CHECK(rc == DPDPU_CACHE_INSERTED || rc == DPDPU_CACHE_UPDATED || rc == DPDPU_ERR_NO_DEVICE_MEMORY);
            a->refused += rc == DPDPU_ERR_NO_DEVICE_MEMORY;
            break;
        case 2:
            rc = dpdpu_cache_get(a->cache, key, (size_t)len, &e);
            CHECK(rc == 0 || rc == 1);
            if (rc == 1)
                CHECK(e.version == k && e.offset == (uint64_t)k * 4096 && e.file == k % 7 && e.size == k + 1);
            break;
        default:
            rc = dpdpu_cache_delete(a->cache, key, (size_t)len);
            CHECK(rc == 0 || rc == 1);
            break;
        }
        CHECK(dpdpu_cache_count(a->cache) <= CAPACITY);
    }
    return NULL;
}

static void concurrent_updates(void)
{
    struct cache_args args[THREADS];
    struct dpdpu_cache *cache;
    struct dpdpu_cache_entry e;
    uint64_t present = 0, refused = 0;
    char key[32];

    CHECK_OK(dpdpu_cache_create(CAPACITY, &cache));
    for (int i = 0; i < THREADS; i++)
        args[i] = (struct cache_args){cache, 0x1234567ull * (uint64_t)(i + 1), 0};
    t_run_threads(THREADS, cache_main, args, sizeof(args[0]));
    for (uint32_t k = 0; k < KEYS; k++) {
        int len = key_of(k, key);
        present += (uint64_t)dpdpu_cache_get(cache, key, (size_t)len, &e);
    }
    for (int i = 0; i < THREADS; i++)
        refused += args[i].refused;
    CHECK(present == dpdpu_cache_count(cache));
    CHECK(refused > 0); /* more keys than room: the bound was reached */
    dpdpu_cache_free(cache);
}

int main(void)
{
    printf("stress_cache\n");
    RUN(concurrent_updates);
    return 0;
}
