/*
 * kernels_agg.c - hashing, hash aggregation and hash partitioning.
 *
 * Aggregation runs per morsel into a partial state (groups in order of first
 * appearance, with their accumulators); a final job merges the partial
 * states in row order, so the merged groups are still in order of first
 * appearance, and writes the result columns.
 *
 * Hashes are deterministic: no seed varies between runs, processes or
 * machines, so partitions computed anywhere agree.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels_internal.h"

#define KGOLDEN 0x9e3779b97f4a7c15ULL
#define KEMPTY UINT32_MAX

/* --- hashing ------------------------------------------------------------------- */

static inline uint64_t load_le64(const uint8_t *p)
{
    /* Assembled bytewise so the hash does not depend on the machine's byte order. */
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 | (uint64_t)p[7] << 56;
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t dpdpu__hash_bytes(const uint8_t *p, int64_t n)
{
    uint64_t h = 0x6a09e667f3bcc909ULL ^ ((uint64_t)n * KGOLDEN);
    while (n >= 8) {
        h = rotl64(h ^ (load_le64(p) * 0xd6e8feb86659fd93ULL), 29) * KGOLDEN;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        for (int64_t i = 0; i < n; i++)
            w |= (uint64_t)p[i] << (8 * i);
        h = rotl64(h ^ (w * 0xd6e8feb86659fd93ULL), 29) * KGOLDEN;
    }
    return kmix(h);
}

/* Equal values hash alike: -0.0 as 0.0 and every NaN as one NaN. */
static inline uint64_t hash_double(double x)
{
    uint64_t bits;
    if (x == 0)
        x = 0;
    if (isnan(x))
        x = NAN;
    memcpy(&bits, &x, sizeof(bits));
    return kmix(bits);
}

/* Hash of element e of a plain value column. */
static inline uint64_t hash_element(const struct dpdpu_column *v, int64_t e)
{
    int64_t len;
    const uint8_t *s;
    switch (v->type) {
    case DPDPU_COL_FLOAT32:
        return hash_double(((const float *)v->values)[e]);
    case DPDPU_COL_FLOAT64:
        return hash_double(((const double *)v->values)[e]);
    case DPDPU_COL_STRING:
    case DPDPU_COL_LARGE_STRING:
        s = kstr_at(v, e, &len);
        return dpdpu__hash_bytes(s, len);
    case DPDPU_COL_FIXED:
        return dpdpu__hash_bytes((const uint8_t *)v->values + (size_t)e * v->width, v->width);
    case DPDPU_COL_NULL:
    case DPDPU_COL_OTHER:
        return KHASH_NULL;
    default:
        return kmix((uint64_t)kint_at(v, e));
    }
}

#define HASH_INTS(T)                                                                                           \
    do {                                                                                                       \
        const T *p = (const T *)c->values + c->offset + r;                                                     \
        for (int64_t i = 0; i < n; i++)                                                                        \
            out[i] = kmix((uint64_t)(int64_t)p[i]);                                                            \
    } while (0)

static void hash_column(const struct dpdpu_column *c, int64_t r, int64_t n, uint64_t *out)
{
    if (c->dictionary == NULL && (c->validity == NULL || c->null_count == 0)) {
        switch (c->type) {
        case DPDPU_COL_INT8:
            HASH_INTS(int8_t);
            return;
        case DPDPU_COL_INT16:
            HASH_INTS(int16_t);
            return;
        case DPDPU_COL_INT32:
            HASH_INTS(int32_t);
            return;
        case DPDPU_COL_INT64:
            HASH_INTS(int64_t);
            return;
        case DPDPU_COL_UINT8:
            HASH_INTS(uint8_t);
            return;
        case DPDPU_COL_UINT16:
            HASH_INTS(uint16_t);
            return;
        case DPDPU_COL_UINT32:
            HASH_INTS(uint32_t);
            return;
        case DPDPU_COL_UINT64:
            HASH_INTS(uint64_t);
            return;
        default:
            break;
        }
    }
    const struct dpdpu_column *v = kvalues_of(c);
    for (int64_t i = 0; i < n; i++) {
        int64_t e = kresolve(c, r + i);
        out[i] = e < 0 ? KHASH_NULL : hash_element(v, e);
    }
}

void dpdpu__hash_rows(const struct dpdpu_column *cols, const int32_t *keys, uint32_t n_keys, int64_t r, int64_t n,
                      uint64_t *out)
{
    uint64_t tmp[KBLOCK];

    if (n_keys == 0) {
        for (int64_t i = 0; i < n; i++)
            out[i] = KHASH_NULL;
        return;
    }
    hash_column(&cols[keys[0]], r, n, out);
    for (uint32_t k = 1; k < n_keys; k++) {
        hash_column(&cols[keys[k]], r, n, tmp);
        for (int64_t i = 0; i < n; i++)
            out[i] = kmix(out[i] * KGOLDEN + tmp[i]);
    }
}

uint64_t dpdpu_kernel_hash_row(const struct dpdpu_column *columns, const int32_t *keys, uint32_t n_keys,
                               int64_t row)
{
    uint64_t h;
    dpdpu__hash_rows(columns, keys, n_keys, row, 1, &h);
    return h;
}

/* --- aggregation state ----------------------------------------------------------- */

enum { KK_INT, KK_FLOAT, KK_STR };
enum { ACC_NONE, ACC_I64, ACC_U64, ACC_F64, ACC_STR };

struct kkey {
    uint32_t type;  /* value column type */
    uint32_t width; /* of DPDPU_COL_FIXED */
    uint32_t kind;
    int64_t *val;  /* ints, or the bits of doubles */
    const uint8_t **sptr;
    int64_t *slen;
    uint8_t *valid;
};

struct kacc {
    uint32_t func;
    uint32_t type; /* value column type (DPDPU_COL_NULL for COUNT_ALL) */
    uint32_t acc;
    int64_t *count;
    union {
        int64_t *i;
        uint64_t *u;
        double *f;
        void *p;
    } v;
    const uint8_t **sptr;
    int64_t *slen;
    uint8_t *seen; /* float min/max: a non-NaN value was seen */
    uint8_t *nan;  /* float min/max: a NaN was seen */
};

/* A hash table entry: the group's hash kept next to its number, so most
 * probes touch one cache line. */
struct kslot {
    uint64_t hash;
    uint32_t group; /* KEMPTY: unused */
    uint32_t pad;
};

/* Most groups per table entry: a sparse table keeps probe sequences short. */
#define KLOAD_SHIFT 2

struct kagg_state {
    uint32_t n_keys;
    uint32_t n_aggs;
    int64_t n_groups;
    int64_t cap;
    uint64_t *hash;
    struct kkey *keys;
    struct kacc *accs;
    struct kslot *slots;
    uint64_t mask;
};

static uint32_t key_kind(uint32_t type)
{
    if (ktype_is_float(type))
        return KK_FLOAT;
    /* Fixed-width values (decimals, fixed-size binary) group as byte strings. */
    if (ktype_is_string(type) || type == DPDPU_COL_FIXED)
        return KK_STR;
    return KK_INT;
}

static uint32_t acc_kind(uint32_t func, uint32_t type)
{
    switch (func) {
    case DPDPU_AGG_SUM:
        if (ktype_is_float(type))
            return ACC_F64;
        return (type >= DPDPU_COL_INT8 && type <= DPDPU_COL_INT64) ? ACC_I64 : ACC_U64;
    case DPDPU_AGG_MEAN:
        return ACC_F64;
    case DPDPU_AGG_MIN:
    case DPDPU_AGG_MAX:
        if (ktype_is_float(type))
            return ACC_F64;
        if (ktype_is_string(type))
            return ACC_STR;
        return (type >= DPDPU_COL_INT8 && type <= DPDPU_COL_INT64) ? ACC_I64 : ACC_U64;
    default:
        return ACC_NONE;
    }
}

void dpdpu_kernel_state_free(void *state)
{
    struct kagg_state *st = state;
    if (st == NULL)
        return;
    if (st->keys != NULL)
        for (uint32_t k = 0; k < st->n_keys; k++) {
            free(st->keys[k].val);
            free(st->keys[k].sptr);
            free(st->keys[k].slen);
            free(st->keys[k].valid);
        }
    if (st->accs != NULL)
        for (uint32_t a = 0; a < st->n_aggs; a++) {
            free(st->accs[a].count);
            free(st->accs[a].v.p);
            free(st->accs[a].sptr);
            free(st->accs[a].slen);
            free(st->accs[a].seen);
            free(st->accs[a].nan);
        }
    free(st->keys);
    free(st->accs);
    free(st->hash);
    free(st->slots);
    free(st);
}

/* Resize a per-group array from `used` to `cap` elements of `size` bytes. */
static int regrow(void *pp, int64_t used, int64_t cap, size_t size)
{
    void **p = pp;
    void *q = dpdpu__kalloc((size_t)cap * size);
    if (q == NULL)
        return DPDPU_ERR_NO_MEMORY;
    if (used > 0)
        memcpy(q, *p, (size_t)used * size);
    free(*p);
    *p = q;
    return DPDPU_OK;
}

/* Make room for `more` new groups. */
static int reserve_groups(struct kagg_state *st, int64_t more)
{
    int64_t need = st->n_groups + more, cap = st->cap ? st->cap : 64, used = st->n_groups;
    int rc = DPDPU_OK;

    if (need > st->cap) {
        while (cap < need)
            cap *= 2;
        rc |= regrow(&st->hash, used, cap, sizeof(uint64_t));
        for (uint32_t k = 0; k < st->n_keys && rc == DPDPU_OK; k++) {
            struct kkey *key = &st->keys[k];
            rc |= regrow(&key->valid, used, cap, 1);
            if (key->kind == KK_STR) {
                rc |= regrow(&key->sptr, used, cap, sizeof(*key->sptr));
                rc |= regrow(&key->slen, used, cap, sizeof(int64_t));
            } else {
                rc |= regrow(&key->val, used, cap, sizeof(int64_t));
            }
        }
        for (uint32_t a = 0; a < st->n_aggs && rc == DPDPU_OK; a++) {
            struct kacc *acc = &st->accs[a];
            rc |= regrow(&acc->count, used, cap, sizeof(int64_t));
            if (acc->acc == ACC_STR) {
                rc |= regrow(&acc->sptr, used, cap, sizeof(*acc->sptr));
                rc |= regrow(&acc->slen, used, cap, sizeof(int64_t));
            } else if (acc->acc != ACC_NONE) {
                rc |= regrow(&acc->v.p, used, cap, 8);
            }
            if (acc->acc == ACC_F64 && (acc->func == DPDPU_AGG_MIN || acc->func == DPDPU_AGG_MAX)) {
                rc |= regrow(&acc->seen, used, cap, 1);
                rc |= regrow(&acc->nan, used, cap, 1);
            }
        }
        if (rc != DPDPU_OK)
            return DPDPU_ERR_NO_MEMORY;
        st->cap = cap;
    }
    /* Keep the table at most half full so probes stay short. */
    if (((uint64_t)need << KLOAD_SHIFT) > st->mask + 1 || st->slots == NULL) {
        uint64_t size = st->mask + 1 >= 1024 ? st->mask + 1 : 1024;
        while (((uint64_t)need << KLOAD_SHIFT) > size)
            size *= 2;
        struct kslot *slots = dpdpu__kalloc(size * sizeof(*slots));
        if (slots == NULL)
            return DPDPU_ERR_NO_MEMORY;
        memset(slots, 0xff, size * sizeof(*slots));
        for (int64_t g = 0; g < st->n_groups; g++) {
            uint64_t s = st->hash[g] & (size - 1);
            while (slots[s].group != KEMPTY)
                s = (s + 1) & (size - 1);
            slots[s].hash = st->hash[g];
            slots[s].group = (uint32_t)g;
        }
        free(st->slots);
        st->slots = slots;
        st->mask = size - 1;
    }
    return DPDPU_OK;
}

/* Zeroed accumulators of group g. */
static void init_group(struct kagg_state *st, int64_t g)
{
    for (uint32_t a = 0; a < st->n_aggs; a++) {
        struct kacc *acc = &st->accs[a];
        acc->count[g] = 0;
        if (acc->acc == ACC_STR) {
            acc->sptr[g] = NULL;
            acc->slen[g] = 0;
        } else if (acc->acc != ACC_NONE) {
            acc->v.u[g] = 0;
        }
        if (acc->seen != NULL) {
            acc->seen[g] = 0;
            acc->nan[g] = 0;
        }
    }
}

static int state_new(const struct dpdpu_kernel_job *job, struct kagg_state **out)
{
    struct kagg_state *st = calloc(1, sizeof(*st));
    if (st == NULL)
        return DPDPU_ERR_NO_MEMORY;
    st->n_keys = job->n_keys;
    st->n_aggs = job->n_aggs;
    st->keys = calloc(job->n_keys + 1, sizeof(*st->keys));
    st->accs = calloc(job->n_aggs + 1, sizeof(*st->accs));
    if (st->keys == NULL || st->accs == NULL) {
        dpdpu_kernel_state_free(st);
        return DPDPU_ERR_NO_MEMORY;
    }
    for (uint32_t k = 0; k < job->n_keys; k++) {
        const struct dpdpu_column *v = kvalues_of(&job->columns[job->keys[k]]);
        st->keys[k].type = v->type;
        st->keys[k].width = v->type == DPDPU_COL_FIXED ? v->width : 0;
        st->keys[k].kind = key_kind(st->keys[k].type);
    }
    for (uint32_t a = 0; a < job->n_aggs; a++) {
        const struct dpdpu_kernel_agg *spec = &job->aggs[a];
        struct kacc *acc = &st->accs[a];
        acc->func = spec->func;
        acc->type = spec->column >= 0 ? kvalues_of(&job->columns[spec->column])->type : DPDPU_COL_NULL;
        acc->acc = acc_kind(acc->func, acc->type);
    }
    if (reserve_groups(st, 1) != DPDPU_OK) {
        dpdpu_kernel_state_free(st);
        return DPDPU_ERR_NO_MEMORY;
    }
    if (st->n_keys == 0) {
        /* Without keys there is exactly one group, even over no rows. */
        st->hash[0] = KHASH_NULL;
        init_group(st, 0);
        st->n_groups = 1;
    }
    *out = st;
    return DPDPU_OK;
}

static int same_shape(const struct kagg_state *a, const struct kagg_state *b)
{
    if (a->n_keys != b->n_keys || a->n_aggs != b->n_aggs)
        return 0;
    for (uint32_t k = 0; k < a->n_keys; k++)
        if (a->keys[k].kind != b->keys[k].kind || a->keys[k].type != b->keys[k].type ||
            a->keys[k].width != b->keys[k].width)
            return 0;
    for (uint32_t i = 0; i < a->n_aggs; i++)
        if (a->accs[i].func != b->accs[i].func || a->accs[i].acc != b->accs[i].acc ||
            a->accs[i].type != b->accs[i].type)
            return 0;
    return 1;
}

/* --- grouping rows ------------------------------------------------------------------ */

/* Key k of a row: element e of value column v (e < 0: null). */
struct krowkey {
    const struct dpdpu_column *v;
    int64_t e;
};

static int64_t key_int(const struct dpdpu_column *v, int64_t e, uint32_t kind)
{
    if (kind == KK_FLOAT) {
        double x = v->type == DPDPU_COL_FLOAT64 ? ((const double *)v->values)[e]
                                                : (double)((const float *)v->values)[e];
        int64_t bits;
        memcpy(&bits, &x, sizeof(bits));
        return bits;
    }
    return kint_at(v, e);
}

static int row_matches(const struct kagg_state *st, int64_t g, const struct krowkey *rk)
{
    for (uint32_t k = 0; k < st->n_keys; k++) {
        const struct kkey *key = &st->keys[k];
        int valid = rk[k].e >= 0;
        if (key->valid[g] != valid)
            return 0;
        if (!valid)
            continue;
        if (key->kind == KK_STR) {
            int64_t len;
            const uint8_t *s = kbytes_at(rk[k].v, rk[k].e, &len);
            if (len != key->slen[g] || (len && memcmp(s, key->sptr[g], (size_t)len) != 0))
                return 0;
        } else if (key->val[g] != key_int(rk[k].v, rk[k].e, key->kind)) {
            return 0;
        }
    }
    return 1;
}

static uint32_t add_group_from_row(struct kagg_state *st, uint64_t h, const struct krowkey *rk)
{
    int64_t g = st->n_groups++;
    st->hash[g] = h;
    for (uint32_t k = 0; k < st->n_keys; k++) {
        struct kkey *key = &st->keys[k];
        key->valid[g] = rk[k].e >= 0;
        if (key->kind == KK_STR) {
            key->sptr[g] = NULL;
            key->slen[g] = 0;
            if (rk[k].e >= 0)
                key->sptr[g] = kbytes_at(rk[k].v, rk[k].e, &key->slen[g]);
        } else {
            key->val[g] = rk[k].e >= 0 ? key_int(rk[k].v, rk[k].e, key->kind) : 0;
        }
    }
    init_group(st, g);
    return (uint32_t)g;
}

/* gid[i] = group of row r + i; the state has room for n new groups. */
static void group_rows(struct kagg_state *st, const struct dpdpu_kernel_job *job, int64_t r, int64_t n,
                       uint64_t *hashes, uint32_t *gid)
{
    const struct dpdpu_column *c0 = &job->columns[job->keys[0]];

    dpdpu__hash_rows(job->columns, job->keys, job->n_keys, r, n, hashes);
    if (st->n_keys == 1 && c0->dictionary == NULL && ktype_is_int(c0->type) &&
        (c0->validity == NULL || c0->null_count == 0)) {
        /* One integer key without nulls: the hash is a bijection of the value,
         * so equal hashes mean equal keys (a null group must still differ). */
        const uint8_t *valid = st->keys[0].valid;
        struct kslot *slots = st->slots;
        for (int64_t i = 0; i < n; i++) {
            uint64_t h = hashes[i], s = h & st->mask;
            uint32_t g;
            for (;;) {
                struct kslot *slot = &slots[s];
                g = slot->group;
                if (g == KEMPTY) {
                    struct krowkey rk = {c0, c0->offset + r + i};
                    g = add_group_from_row(st, h, &rk);
                    slot->hash = h;
                    slot->group = g;
                    break;
                }
                if (slot->hash == h && (h != KHASH_NULL || valid[g]))
                    break;
                s = (s + 1) & st->mask;
            }
            gid[i] = g;
        }
        return;
    }
    struct krowkey rk[64];
    for (int64_t i = 0; i < n; i++) {
        for (uint32_t k = 0; k < st->n_keys; k++) {
            const struct dpdpu_column *c = &job->columns[job->keys[k]];
            rk[k].v = kvalues_of(c);
            rk[k].e = kresolve(c, r + i);
        }
        uint64_t h = hashes[i], s = h & st->mask;
        uint32_t g;
        for (;;) {
            struct kslot *slot = &st->slots[s];
            g = slot->group;
            if (g == KEMPTY) {
                g = add_group_from_row(st, h, rk);
                slot->hash = h;
                slot->group = g;
                break;
            }
            if (slot->hash == h && row_matches(st, g, rk))
                break;
            s = (s + 1) & st->mask;
        }
        gid[i] = g;
    }
}

/* --- accumulating ------------------------------------------------------------------------ */

/* Loops over the rows of a block: BODY sees x (the value) and g (its group). */
#define FOR_VALUES(T, BODY)                                                                                    \
    do {                                                                                                       \
        const T *p_ = (const T *)c->values + c->offset + r;                                                    \
        if (all_valid) {                                                                                       \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                const T x = p_[i];                                                                             \
                const uint32_t g = gid[i];                                                                     \
                BODY;                                                                                          \
            }                                                                                                  \
        } else {                                                                                               \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                if (!valid[i])                                                                                 \
                    continue;                                                                                  \
                const T x = p_[i];                                                                             \
                const uint32_t g = gid[i];                                                                     \
                BODY;                                                                                          \
            }                                                                                                  \
        }                                                                                                      \
    } while (0)

#define FOR_INT_TYPES(MACRO)                                                                                   \
    switch (c->type) {                                                                                         \
    case DPDPU_COL_INT8:                                                                                       \
        MACRO(int8_t);                                                                                         \
        break;                                                                                                 \
    case DPDPU_COL_INT16:                                                                                      \
        MACRO(int16_t);                                                                                        \
        break;                                                                                                 \
    case DPDPU_COL_INT32:                                                                                      \
        MACRO(int32_t);                                                                                        \
        break;                                                                                                 \
    case DPDPU_COL_INT64:                                                                                      \
        MACRO(int64_t);                                                                                        \
        break;                                                                                                 \
    case DPDPU_COL_UINT8:                                                                                      \
        MACRO(uint8_t);                                                                                        \
        break;                                                                                                 \
    case DPDPU_COL_UINT16:                                                                                     \
        MACRO(uint16_t);                                                                                       \
        break;                                                                                                 \
    case DPDPU_COL_UINT32:                                                                                     \
        MACRO(uint32_t);                                                                                       \
        break;                                                                                                 \
    case DPDPU_COL_UINT64:                                                                                     \
        MACRO(uint64_t);                                                                                       \
        break;                                                                                                 \
    default:                                                                                                   \
        break;                                                                                                 \
    }

/* Signed values convert to uint64 modulo 2^64, so the sum wraps like int64. */
#define SUM_INT(T) FOR_VALUES(T, (acc->v.u[g] += (uint64_t)x, cnt[g]++))
#define MEAN_INT(T) FOR_VALUES(T, (acc->v.f[g] += (double)x, cnt[g]++))
#define MIN_SIGNED(T) FOR_VALUES(T, ((cnt[g]++ == 0 || (int64_t)x < acc->v.i[g]) ? (void)(acc->v.i[g] = (int64_t)x) : (void)0))
#define MAX_SIGNED(T) FOR_VALUES(T, ((cnt[g]++ == 0 || (int64_t)x > acc->v.i[g]) ? (void)(acc->v.i[g] = (int64_t)x) : (void)0))
#define MIN_UNSIGNED(T)                                                                                        \
    FOR_VALUES(T, ((cnt[g]++ == 0 || (uint64_t)x < acc->v.u[g]) ? (void)(acc->v.u[g] = (uint64_t)x) : (void)0))
#define MAX_UNSIGNED(T)                                                                                        \
    FOR_VALUES(T, ((cnt[g]++ == 0 || (uint64_t)x > acc->v.u[g]) ? (void)(acc->v.u[g] = (uint64_t)x) : (void)0))
#define MIN_INT(T)                                                                                             \
    do {                                                                                                       \
        if (acc->acc == ACC_I64)                                                                               \
            MIN_SIGNED(T);                                                                                     \
        else                                                                                                   \
            MIN_UNSIGNED(T);                                                                                   \
    } while (0)
#define MAX_INT(T)                                                                                             \
    do {                                                                                                       \
        if (acc->acc == ACC_I64)                                                                               \
            MAX_SIGNED(T);                                                                                     \
        else                                                                                                   \
            MAX_UNSIGNED(T);                                                                                   \
    } while (0)

/* NaN is skipped unless a group has nothing else; ties keep the earlier value. */
#define MINMAX_FLOAT(T, OP)                                                                                    \
    FOR_VALUES(T, {                                                                                            \
        double d = (double)x;                                                                                  \
        cnt[g]++;                                                                                              \
        if (isnan(d))                                                                                          \
            acc->nan[g] = 1;                                                                                   \
        else if (!acc->seen[g] || d OP acc->v.f[g]) {                                                          \
            acc->v.f[g] = d;                                                                                   \
            acc->seen[g] = 1;                                                                                  \
        }                                                                                                      \
    })

static void accumulate(struct kacc *acc, const struct dpdpu_column *c, int64_t r, int64_t n, const uint32_t *gid,
                       uint8_t *valid)
{
    int64_t *cnt = acc->count;
    int all_valid;

    if (acc->func == DPDPU_AGG_COUNT_ALL) {
        for (int64_t i = 0; i < n; i++)
            cnt[gid[i]]++;
        return;
    }
    all_valid = dpdpu__valid_bytes(c, r, n, valid);
    if (acc->func == DPDPU_AGG_COUNT) {
        if (all_valid)
            for (int64_t i = 0; i < n; i++)
                cnt[gid[i]]++;
        else
            for (int64_t i = 0; i < n; i++)
                cnt[gid[i]] += valid[i];
        return;
    }
    if (c->type == DPDPU_COL_BOOL) {
        /* Booleans aggregate as 0/1 (sum and mean count the true values). */
        uint8_t bits[KBLOCK];
        const uint8_t *x = bits;
        dpdpu__unpack_bits((const uint8_t *)c->values, c->offset + r, n, bits);
        for (int64_t i = 0; i < n; i++) {
            uint32_t g = gid[i];
            if (!all_valid && !valid[i])
                continue;
            switch (acc->func) {
            case DPDPU_AGG_SUM:
                acc->v.u[g] += x[i];
                break;
            case DPDPU_AGG_MEAN:
                acc->v.f[g] += x[i];
                break;
            case DPDPU_AGG_MIN:
                if (cnt[g] == 0 || x[i] < acc->v.u[g])
                    acc->v.u[g] = x[i];
                break;
            default:
                if (cnt[g] == 0 || x[i] > acc->v.u[g])
                    acc->v.u[g] = x[i];
                break;
            }
            cnt[g]++;
        }
        return;
    }
    if (ktype_is_string(c->type)) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t g = gid[i];
            int64_t len;
            if (!all_valid && !valid[i])
                continue;
            const uint8_t *s = kstr_at(c, c->offset + r + i, &len);
            int better = cnt[g] == 0;
            if (!better) {
                int cmp = kstr_cmp(s, len, acc->sptr[g], acc->slen[g]);
                better = acc->func == DPDPU_AGG_MIN ? cmp < 0 : cmp > 0;
            }
            if (better) {
                acc->sptr[g] = s;
                acc->slen[g] = len;
            }
            cnt[g]++;
        }
        return;
    }
    switch (acc->func) {
    case DPDPU_AGG_SUM:
        if (c->type == DPDPU_COL_FLOAT64)
            FOR_VALUES(double, (acc->v.f[g] += x, cnt[g]++));
        else if (c->type == DPDPU_COL_FLOAT32)
            FOR_VALUES(float, (acc->v.f[g] += (double)x, cnt[g]++));
        else
            FOR_INT_TYPES(SUM_INT)
        break;
    case DPDPU_AGG_MEAN:
        if (c->type == DPDPU_COL_FLOAT64)
            FOR_VALUES(double, (acc->v.f[g] += x, cnt[g]++));
        else if (c->type == DPDPU_COL_FLOAT32)
            FOR_VALUES(float, (acc->v.f[g] += (double)x, cnt[g]++));
        else
            FOR_INT_TYPES(MEAN_INT)
        break;
    case DPDPU_AGG_MIN:
        if (c->type == DPDPU_COL_FLOAT64)
            MINMAX_FLOAT(double, <);
        else if (c->type == DPDPU_COL_FLOAT32)
            MINMAX_FLOAT(float, <);
        else
            FOR_INT_TYPES(MIN_INT)
        break;
    case DPDPU_AGG_MAX:
        if (c->type == DPDPU_COL_FLOAT64)
            MINMAX_FLOAT(double, >);
        else if (c->type == DPDPU_COL_FLOAT32)
            MINMAX_FLOAT(float, >);
        else
            FOR_INT_TYPES(MAX_INT)
        break;
    default:
        break;
    }
}

static int aggregate_rows(struct kagg_state *st, const struct dpdpu_kernel_job *job)
{
    uint64_t *hashes = dpdpu__kalloc(KBLOCK * sizeof(uint64_t));
    uint32_t *gid = dpdpu__kalloc(KBLOCK * sizeof(uint32_t));
    uint8_t *valid = dpdpu__kalloc(KBLOCK);
    int rc = DPDPU_OK;

    if (hashes == NULL || gid == NULL || valid == NULL) {
        rc = DPDPU_ERR_NO_MEMORY;
        goto out;
    }
    if (st->n_keys == 0)
        memset(gid, 0, KBLOCK * sizeof(uint32_t));
    for (int64_t r = job->row_begin; r < job->row_begin + job->n_rows; r += KBLOCK) {
        int64_t n = job->row_begin + job->n_rows - r;
        if (n > KBLOCK)
            n = KBLOCK;
        if (st->n_keys > 0) {
            if ((rc = reserve_groups(st, n)) != DPDPU_OK)
                goto out;
            group_rows(st, job, r, n, hashes, gid);
        }
        for (uint32_t a = 0; a < st->n_aggs; a++) {
            int32_t col = job->aggs[a].column;
            accumulate(&st->accs[a], col >= 0 ? &job->columns[col] : NULL, r, n, gid, valid);
        }
    }
out:
    free(hashes);
    free(gid);
    free(valid);
    return rc;
}

/* --- merging partial states ------------------------------------------------------------ */

static int group_matches(const struct kagg_state *st, int64_t g, const struct kagg_state *o, int64_t h)
{
    for (uint32_t k = 0; k < st->n_keys; k++) {
        const struct kkey *a = &st->keys[k], *b = &o->keys[k];
        if (a->valid[g] != b->valid[h])
            return 0;
        if (!a->valid[g])
            continue;
        if (a->kind == KK_STR) {
            if (a->slen[g] != b->slen[h] || (a->slen[g] && memcmp(a->sptr[g], b->sptr[h], (size_t)a->slen[g])))
                return 0;
        } else if (a->val[g] != b->val[h]) {
            return 0;
        }
    }
    return 1;
}

static void combine(struct kacc *acc, int64_t g, const struct kacc *o, int64_t h)
{
    int64_t mine = acc->count[g], theirs = o->count[h];
    acc->count[g] = mine + theirs;
    if (theirs == 0 || acc->acc == ACC_NONE)
        return;
    switch (acc->func) {
    case DPDPU_AGG_SUM:
    case DPDPU_AGG_MEAN:
        if (acc->acc == ACC_F64)
            acc->v.f[g] += o->v.f[h];
        else
            acc->v.u[g] += o->v.u[h];
        return;
    default:
        break;
    }
    int want_min = acc->func == DPDPU_AGG_MIN;
    switch (acc->acc) {
    case ACC_I64:
        if (mine == 0 || (want_min ? o->v.i[h] < acc->v.i[g] : o->v.i[h] > acc->v.i[g]))
            acc->v.i[g] = o->v.i[h];
        break;
    case ACC_U64:
        if (mine == 0 || (want_min ? o->v.u[h] < acc->v.u[g] : o->v.u[h] > acc->v.u[g]))
            acc->v.u[g] = o->v.u[h];
        break;
    case ACC_F64:
        acc->nan[g] |= o->nan[h];
        if (o->seen[h] &&
            (!acc->seen[g] || (want_min ? o->v.f[h] < acc->v.f[g] : o->v.f[h] > acc->v.f[g]))) {
            acc->v.f[g] = o->v.f[h];
            acc->seen[g] = 1;
        }
        break;
    case ACC_STR: {
        int cmp = mine == 0 ? 0 : kstr_cmp(o->sptr[h], o->slen[h], acc->sptr[g], acc->slen[g]);
        if (mine == 0 || (want_min ? cmp < 0 : cmp > 0)) {
            acc->sptr[g] = o->sptr[h];
            acc->slen[g] = o->slen[h];
        }
        break;
    }
    default:
        break;
    }
}

static int merge_state(struct kagg_state *st, const struct kagg_state *o)
{
    int rc = reserve_groups(st, o->n_groups);
    if (rc != DPDPU_OK)
        return rc;
    for (int64_t h = 0; h < o->n_groups; h++) {
        int64_t g;
        if (st->n_keys == 0) {
            g = 0;
        } else {
            uint64_t s = o->hash[h] & st->mask;
            for (;;) {
                uint32_t cand = st->slots[s].group;
                if (cand == KEMPTY) {
                    g = st->n_groups++;
                    st->hash[g] = o->hash[h];
                    for (uint32_t k = 0; k < st->n_keys; k++) {
                        struct kkey *a = &st->keys[k];
                        const struct kkey *b = &o->keys[k];
                        a->valid[g] = b->valid[h];
                        if (a->kind == KK_STR) {
                            a->sptr[g] = b->sptr[h];
                            a->slen[g] = b->slen[h];
                        } else {
                            a->val[g] = b->val[h];
                        }
                    }
                    init_group(st, g);
                    st->slots[s].hash = o->hash[h];
                    st->slots[s].group = (uint32_t)g;
                    break;
                }
                if (st->slots[s].hash == o->hash[h] && group_matches(st, cand, o, h)) {
                    g = cand;
                    break;
                }
                s = (s + 1) & st->mask;
            }
        }
        for (uint32_t a = 0; a < st->n_aggs; a++)
            combine(&st->accs[a], g, &o->accs[a], h);
    }
    return DPDPU_OK;
}

/* --- writing results --------------------------------------------------------------------- */

static int alloc_validity(struct dpdpu_kernel_out *o, int64_t n)
{
    o->validity_bytes = (uint64_t)(n + 7) / 8;
    o->validity = dpdpu__kcalloc(o->validity_bytes);
    return o->validity != NULL ? DPDPU_OK : DPDPU_ERR_NO_MEMORY;
}

static void set_valid(struct dpdpu_kernel_out *o, int64_t i)
{
    ((uint8_t *)o->validity)[i >> 3] |= (uint8_t)(1u << (i & 7));
}

static void drop_validity_if_full(struct dpdpu_kernel_out *o)
{
    if (o->null_count == 0 && o->validity != NULL) {
        free(o->validity);
        o->validity = NULL;
        o->validity_bytes = 0;
    }
}

/* Write n values of `type` from int64 (or double bits, for floats) src;
 * `present(i)` says which are valid. */
static int write_values(struct dpdpu_kernel_out *o, uint32_t type, int64_t n, const int64_t *ival,
                        const double *fval)
{
    size_t width;
    struct dpdpu_column probe = {.type = type};

    o->type = type;
    o->length = n;
    if (type == DPDPU_COL_NULL)
        return DPDPU_OK;
    if (type == DPDPU_COL_BOOL) {
        o->values_bytes = (uint64_t)(n + 7) / 8;
        if ((o->values = dpdpu__kcalloc(o->values_bytes)) == NULL)
            return DPDPU_ERR_NO_MEMORY;
        for (int64_t i = 0; i < n; i++)
            if (ival[i])
                ((uint8_t *)o->values)[i >> 3] |= (uint8_t)(1u << (i & 7));
        return DPDPU_OK;
    }
    width = ktype_width(&probe);
    o->values_bytes = (uint64_t)n * width;
    if ((o->values = dpdpu__kalloc(o->values_bytes)) == NULL)
        return DPDPU_ERR_NO_MEMORY;
    for (int64_t i = 0; i < n; i++) {
        void *d = (uint8_t *)o->values + (size_t)i * width;
        switch (type) {
        case DPDPU_COL_INT8:
        case DPDPU_COL_UINT8: {
            uint8_t v = (uint8_t)ival[i];
            memcpy(d, &v, 1);
            break;
        }
        case DPDPU_COL_INT16:
        case DPDPU_COL_UINT16: {
            uint16_t v = (uint16_t)ival[i];
            memcpy(d, &v, 2);
            break;
        }
        case DPDPU_COL_INT32:
        case DPDPU_COL_UINT32: {
            uint32_t v = (uint32_t)ival[i];
            memcpy(d, &v, 4);
            break;
        }
        case DPDPU_COL_FLOAT32: {
            float v = (float)fval[i];
            memcpy(d, &v, 4);
            break;
        }
        case DPDPU_COL_FLOAT64:
            memcpy(d, &fval[i], 8);
            break;
        default:
            memcpy(d, &ival[i], 8);
            break;
        }
    }
    return DPDPU_OK;
}

static int write_strings(struct dpdpu_kernel_out *o, uint32_t type, int64_t n, const uint8_t *const *sptr,
                         const int64_t *slen, const uint8_t *present)
{
    uint64_t total = 0;
    size_t ow = type == DPDPU_COL_STRING ? 4 : 8;

    o->type = type;
    o->length = n;
    for (int64_t i = 0; i < n; i++)
        if (present[i])
            total += (uint64_t)slen[i];
    if (type == DPDPU_COL_STRING && total > INT32_MAX)
        return DPDPU_ERR_TOO_LARGE;
    o->offsets_bytes = (uint64_t)(n + 1) * ow;
    o->values_bytes = total;
    o->offsets = dpdpu__kalloc(o->offsets_bytes);
    o->values = dpdpu__kalloc(total);
    if (o->offsets == NULL || o->values == NULL)
        return DPDPU_ERR_NO_MEMORY;
    uint64_t pos = 0;
    for (int64_t i = 0; i <= n; i++) {
        if (ow == 4) {
            int32_t v = (int32_t)pos;
            memcpy((uint8_t *)o->offsets + i * 4, &v, 4);
        } else {
            int64_t v = (int64_t)pos;
            memcpy((uint8_t *)o->offsets + i * 8, &v, 8);
        }
        if (i < n && present[i] && slen[i] > 0) {
            memcpy((uint8_t *)o->values + pos, sptr[i], (size_t)slen[i]);
            pos += (uint64_t)slen[i];
        }
    }
    return DPDPU_OK;
}

static int emit_key(const struct kkey *key, int64_t n, struct dpdpu_kernel_out *o)
{
    int rc;
    if (key->type == DPDPU_COL_NULL) {
        o->type = DPDPU_COL_NULL;
        o->length = n;
        o->null_count = n;
        return DPDPU_OK;
    }
    if ((rc = alloc_validity(o, n)) != DPDPU_OK)
        return rc;
    for (int64_t i = 0; i < n; i++) {
        if (key->valid[i])
            set_valid(o, i);
        else
            o->null_count++;
    }
    drop_validity_if_full(o);
    if (key->type == DPDPU_COL_FIXED) {
        o->type = DPDPU_COL_FIXED;
        o->width = key->width;
        o->values_bytes = (uint64_t)n * key->width;
        if ((o->values = dpdpu__kcalloc(o->values_bytes)) == NULL)
            return DPDPU_ERR_NO_MEMORY;
        for (int64_t i = 0; i < n; i++)
            if (key->valid[i])
                memcpy((uint8_t *)o->values + (size_t)i * key->width, key->sptr[i], key->width);
        return DPDPU_OK;
    }
    if (key->kind == KK_STR)
        return write_strings(o, key->type, n, key->sptr, key->slen, key->valid);
    if (key->kind == KK_FLOAT) {
        double *f = dpdpu__kalloc((size_t)n * sizeof(double));
        if (f == NULL)
            return DPDPU_ERR_NO_MEMORY;
        for (int64_t i = 0; i < n; i++)
            memcpy(&f[i], &key->val[i], 8);
        rc = write_values(o, key->type, n, NULL, f);
        free(f);
        return rc;
    }
    return write_values(o, key->type, n, key->val, NULL);
}

static uint32_t sum_type(uint32_t type)
{
    if (ktype_is_float(type))
        return DPDPU_COL_FLOAT64;
    return (type >= DPDPU_COL_INT8 && type <= DPDPU_COL_INT64) ? DPDPU_COL_INT64 : DPDPU_COL_UINT64;
}

static int emit_agg(const struct kacc *acc, int64_t n, struct dpdpu_kernel_out *o)
{
    int rc;
    uint8_t *present;

    if (acc->func == DPDPU_AGG_COUNT || acc->func == DPDPU_AGG_COUNT_ALL)
        return write_values(o, DPDPU_COL_INT64, n, acc->count, NULL);
    if ((rc = alloc_validity(o, n)) != DPDPU_OK)
        return rc;
    present = dpdpu__kalloc((size_t)n);
    if (present == NULL)
        return DPDPU_ERR_NO_MEMORY;
    for (int64_t i = 0; i < n; i++) {
        present[i] = acc->count[i] > 0;
        if (present[i])
            set_valid(o, i);
        else
            o->null_count++;
    }
    drop_validity_if_full(o);
    switch (acc->func) {
    case DPDPU_AGG_SUM:
        if (acc->acc == ACC_F64)
            rc = write_values(o, DPDPU_COL_FLOAT64, n, NULL, acc->v.f);
        else
            rc = write_values(o, sum_type(acc->type), n, acc->v.i, NULL);
        break;
    case DPDPU_AGG_MEAN: {
        double *f = dpdpu__kalloc((size_t)n * sizeof(double));
        if (f == NULL) {
            rc = DPDPU_ERR_NO_MEMORY;
            break;
        }
        for (int64_t i = 0; i < n; i++)
            f[i] = present[i] ? acc->v.f[i] / (double)acc->count[i] : 0.0;
        rc = write_values(o, DPDPU_COL_FLOAT64, n, NULL, f);
        free(f);
        break;
    }
    default:
        if (acc->acc == ACC_STR) {
            rc = write_strings(o, acc->type, n, acc->sptr, acc->slen, present);
        } else if (acc->acc == ACC_F64) {
            double *f = dpdpu__kalloc((size_t)n * sizeof(double));
            if (f == NULL) {
                rc = DPDPU_ERR_NO_MEMORY;
                break;
            }
            for (int64_t i = 0; i < n; i++)
                f[i] = acc->seen[i] ? acc->v.f[i] : (acc->nan[i] ? NAN : 0.0);
            rc = write_values(o, acc->type, n, NULL, f);
            free(f);
        } else {
            rc = write_values(o, acc->type, n, acc->v.i, NULL);
        }
    }
    free(present);
    return rc;
}

static int emit(struct dpdpu_kernel_job *job, const struct kagg_state *st)
{
    int64_t n = st->n_groups;
    for (uint32_t i = 0; i < st->n_keys + st->n_aggs; i++) {
        struct dpdpu_kernel_out *o = &job->out[i];
        int rc;
        memset(o, 0, sizeof(*o));
        o->length = n;
        rc = i < st->n_keys ? emit_key(&st->keys[i], n, o) : emit_agg(&st->accs[i - st->n_keys], n, o);
        if (rc != DPDPU_OK) {
            dpdpu__out_release(job->out, i + 1);
            return rc;
        }
    }
    job->out_rows = n;
    return DPDPU_OK;
}

/* --- the aggregate and partition jobs ------------------------------------------------------ */

static int check_aggregate(struct dpdpu_kernel_job *job)
{
    if (job->n_keys > 64)
        return dpdpu__kfail(job, "%u key columns (at most 64)", job->n_keys);
    if (job->n_keys > 0 && job->keys == NULL)
        return dpdpu__kfail(job, "no key list");
    for (uint32_t k = 0; k < job->n_keys; k++) {
        int32_t col = job->keys[k];
        if (col < 0 || (uint32_t)col >= job->n_columns)
            return dpdpu__kfail(job, "key %u names column %d of %u", k, col, job->n_columns);
        uint32_t t = kvalues_of(&job->columns[col])->type;
        if (t == DPDPU_COL_OTHER)
            return dpdpu__kfail(job, "key column %d has a type that cannot be grouped", col);
    }
    if (job->n_aggs > 0 && job->aggs == NULL)
        return dpdpu__kfail(job, "no aggregate list");
    for (uint32_t a = 0; a < job->n_aggs; a++) {
        const struct dpdpu_kernel_agg *spec = &job->aggs[a];
        if (spec->func > DPDPU_AGG_COUNT_ALL)
            return dpdpu__kfail(job, "aggregate %u has function %u", a, spec->func);
        if (spec->func == DPDPU_AGG_COUNT_ALL)
            continue;
        if (spec->column < 0 || (uint32_t)spec->column >= job->n_columns)
            return dpdpu__kfail(job, "aggregate %u names column %d of %u", a, spec->column, job->n_columns);
        const struct dpdpu_column *c = &job->columns[spec->column];
        if (spec->func == DPDPU_AGG_COUNT)
            continue;
        int ok = c->dictionary == NULL &&
                 (ktype_is_numeric(c->type) ||
                  (ktype_is_string(c->type) && (spec->func == DPDPU_AGG_MIN || spec->func == DPDPU_AGG_MAX)));
        if (!ok)
            return dpdpu__kfail(job, "aggregate %u: function %u does not take column %d (type %u)", a, spec->func,
                                spec->column, c->type);
    }
    if (job->flags & DPDPU_KJOB_FINAL) {
        if (job->n_out < job->n_keys + job->n_aggs || job->out == NULL)
            return dpdpu__kfail(job, "%u outputs for %u keys and %u aggregates", job->n_out, job->n_keys,
                                job->n_aggs);
    }
    if (job->n_partials > 0 && job->partials == NULL)
        return dpdpu__kfail(job, "no partial states");
    for (uint32_t i = 0; i < job->n_partials; i++)
        if (job->partials[i] == NULL)
            return dpdpu__kfail(job, "partial state %u is missing", i);
    return DPDPU_OK;
}

int dpdpu__kernel_aggregate(struct dpdpu_kernel_job *job)
{
    struct kagg_state *st;
    int rc;

    if ((rc = check_aggregate(job)) != DPDPU_OK)
        return rc;
    if ((rc = state_new(job, &st)) != DPDPU_OK)
        return rc;
    for (uint32_t i = 0; i < job->n_partials; i++) {
        const struct kagg_state *o = job->partials[i];
        if (!same_shape(st, o)) {
            dpdpu_kernel_state_free(st);
            return dpdpu__kfail(job, "partial state %u was made for other keys or aggregates", i);
        }
        if ((rc = merge_state(st, o)) != DPDPU_OK) {
            dpdpu_kernel_state_free(st);
            return rc;
        }
    }
    if ((rc = aggregate_rows(st, job)) != DPDPU_OK) {
        dpdpu_kernel_state_free(st);
        return rc;
    }
    if (job->flags & DPDPU_KJOB_FINAL) {
        rc = emit(job, st);
        dpdpu_kernel_state_free(st);
        return rc;
    }
    job->state = st;
    job->out_rows = st->n_groups;
    return DPDPU_OK;
}

int dpdpu__kernel_partition(struct dpdpu_kernel_job *job)
{
    int64_t n = job->n_rows;
    uint32_t parts = job->n_parts;
    uint32_t *part = NULL, *sel = NULL;
    int64_t *pos = NULL;
    uint64_t *hashes = NULL;
    int rc;

    if ((rc = dpdpu__check_gather(job)) != DPDPU_OK)
        return rc;
    if (parts == 0 || job->part_offsets == NULL)
        return dpdpu__kfail(job, "%u parts", parts);
    if (job->n_keys > 0 && job->keys == NULL)
        return dpdpu__kfail(job, "no key list");
    for (uint32_t k = 0; k < job->n_keys; k++)
        if (job->keys[k] < 0 || (uint32_t)job->keys[k] >= job->n_columns ||
            kvalues_of(&job->columns[job->keys[k]])->type == DPDPU_COL_OTHER)
            return dpdpu__kfail(job, "key %u names column %d of %u, or one that cannot be hashed", k,
                                job->keys[k], job->n_columns);
    part = dpdpu__kalloc((size_t)n * sizeof(uint32_t));
    sel = dpdpu__kalloc((size_t)n * sizeof(uint32_t));
    pos = dpdpu__kcalloc(((size_t)parts + 1) * sizeof(int64_t));
    hashes = dpdpu__kalloc(KBLOCK * sizeof(uint64_t));
    if (part == NULL || sel == NULL || pos == NULL || hashes == NULL) {
        rc = DPDPU_ERR_NO_MEMORY;
        goto out;
    }
    for (int64_t r = 0; r < n; r += KBLOCK) {
        int64_t m = n - r < KBLOCK ? n - r : KBLOCK;
        dpdpu__hash_rows(job->columns, job->keys, job->n_keys, job->row_begin + r, m, hashes);
        for (int64_t i = 0; i < m; i++) {
            uint32_t p = (uint32_t)(hashes[i] % parts);
            part[r + i] = p;
            pos[p + 1]++;
        }
    }
    for (uint32_t p = 0; p < parts; p++)
        pos[p + 1] += pos[p];
    memcpy(job->part_offsets, pos, ((size_t)parts + 1) * sizeof(int64_t));
    /* A stable counting sort: rows keep their order within a part. */
    for (int64_t i = 0; i < n; i++)
        sel[pos[part[i]]++] = (uint32_t)i;
    if ((rc = dpdpu__gather_all(job, sel, n)) != DPDPU_OK)
        goto out;
    job->out_rows = n;
    if (job->flags & DPDPU_KJOB_KEEP_SELECTION) {
        job->selection = sel;
        sel = NULL;
    }
out:
    free(part);
    free(sel);
    free(pos);
    free(hashes);
    return rc;
}
