/*
 * kernels_eval.c - the program of predicates and projections, evaluated a
 * block of rows at a time into registers (values plus validity bytes).
 *
 * Leaves that read one column against constants (comparisons with a
 * literal, set membership, null tests) run on a dictionary column's values
 * once per job and are then looked up through the indices, so a string
 * predicate over a dictionary costs one comparison per distinct value.
 */
#include <math.h>
#include <stdlib.h>

#include "kernels_internal.h"

/* A leaf evaluated over a dictionary: its result per dictionary entry, and
 * what a null index gives. */
struct kdict_leaf {
    uint8_t *val;
    uint8_t *valid;
    uint8_t null_val;
    uint8_t null_valid;
};

struct kprog {
    struct dpdpu_kernel_job *job;
    uint32_t n_regs;
    struct kreg *regs;
    struct kdict_leaf *leaves; /* one per instruction */
    uint8_t *scratch;          /* KBLOCK bytes */
    void *block;               /* register memory */
};

const struct kreg *dpdpu__kprog_reg(const struct kprog *p, int32_t reg)
{
    return &p->regs[reg];
}

/* --- leaves over a plain column ---------------------------------------------- */

#define CMP_SWITCH(EXPR_L, LIT)                                                                                \
    do {                                                                                                       \
        switch (in->cmp) {                                                                                     \
        case DPDPU_KCMP_EQ:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) == (LIT);                                                                    \
            break;                                                                                             \
        case DPDPU_KCMP_NE:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) != (LIT);                                                                    \
            break;                                                                                             \
        case DPDPU_KCMP_LT:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) < (LIT);                                                                     \
            break;                                                                                             \
        case DPDPU_KCMP_LE:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) <= (LIT);                                                                    \
            break;                                                                                             \
        case DPDPU_KCMP_GT:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) > (LIT);                                                                     \
            break;                                                                                             \
        default:                                                                                               \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (EXPR_L) >= (LIT);                                                                    \
            break;                                                                                             \
        }                                                                                                      \
    } while (0)

#define CMP_INT(T)                                                                                             \
    do {                                                                                                       \
        const T *p = (const T *)c->values + c->offset + r;                                                     \
        if (in->flags & DPDPU_KF_FLOAT) {                                                                      \
            const double lit = in->f64;                                                                        \
            CMP_SWITCH((double)p[i], lit);                                                                     \
        } else {                                                                                               \
            const T lit = (T)in->i64;                                                                          \
            CMP_SWITCH(p[i], lit);                                                                             \
        }                                                                                                      \
    } while (0)

static void cmp_lit_values(const struct dpdpu_kinsn *in, const struct dpdpu_column *c, int64_t r, int64_t n,
                           uint8_t *out)
{
    switch (c->type) {
    case DPDPU_COL_INT8:
        CMP_INT(int8_t);
        break;
    case DPDPU_COL_INT16:
        CMP_INT(int16_t);
        break;
    case DPDPU_COL_INT32:
        CMP_INT(int32_t);
        break;
    case DPDPU_COL_INT64:
        CMP_INT(int64_t);
        break;
    case DPDPU_COL_UINT8:
        CMP_INT(uint8_t);
        break;
    case DPDPU_COL_UINT16:
        CMP_INT(uint16_t);
        break;
    case DPDPU_COL_UINT32:
        CMP_INT(uint32_t);
        break;
    case DPDPU_COL_UINT64:
        CMP_INT(uint64_t);
        break;
    case DPDPU_COL_FLOAT32: {
        const float *p = (const float *)c->values + c->offset + r;
        const double lit = in->f64;
        CMP_SWITCH((double)p[i], lit);
        break;
    }
    case DPDPU_COL_FLOAT64: {
        const double *p = (const double *)c->values + c->offset + r;
        const double lit = in->f64;
        CMP_SWITCH(p[i], lit);
        break;
    }
    case DPDPU_COL_BOOL: {
        const uint8_t lit = in->i64 != 0;
        dpdpu__unpack_bits((const uint8_t *)c->values, c->offset + r, n, out);
        CMP_SWITCH(out[i], lit);
        break;
    }
    case DPDPU_COL_STRING:
    case DPDPU_COL_LARGE_STRING: {
        const uint8_t *lit = (const uint8_t *)in->ptr;
        for (int64_t i = 0; i < n; i++) {
            int64_t len;
            const uint8_t *s = kstr_at(c, c->offset + r + i, &len);
            if (in->cmp == DPDPU_KCMP_EQ || in->cmp == DPDPU_KCMP_NE)
                out[i] = (len == in->len && (len == 0 || memcmp(s, lit, (size_t)len) == 0)) ==
                         (in->cmp == DPDPU_KCMP_EQ);
            else
                out[i] = (uint8_t)kcmp_holds(in->cmp, kstr_cmp(s, len, lit, in->len));
        }
        break;
    }
    default:
        memset(out, 0, (size_t)n);
        break;
    }
}

static int set_has_i64(const int64_t *set, int64_t n, int64_t v)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (set[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && set[lo] == v;
}

static int set_has_u64(const uint64_t *set, int64_t n, uint64_t v)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (set[mid] < v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && set[lo] == v;
}

static int set_has_str(const struct dpdpu_kinsn *in, const uint8_t *s, int64_t len)
{
    const int64_t *offs = (const int64_t *)in->ptr;
    const uint8_t *data = (const uint8_t *)in->aux;
    int64_t lo = 0, hi = in->len;
    while (lo < hi) {
        int64_t mid = (lo + hi) >> 1;
        if (kstr_cmp(data + offs[mid], offs[mid + 1] - offs[mid], s, len) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < in->len && kstr_cmp(data + offs[lo], offs[lo + 1] - offs[lo], s, len) == 0;
}

static void is_in_values(const struct dpdpu_kinsn *in, const struct dpdpu_column *c, int64_t r, int64_t n,
                         uint8_t *out)
{
    int64_t base = c->offset + r;

    if (ktype_is_float(c->type)) {
        const uint64_t *set = (const uint64_t *)in->ptr;
        int has_nan = (in->flags & DPDPU_KF_HAS_NAN) != 0;
        for (int64_t i = 0; i < n; i++) {
            double x = c->type == DPDPU_COL_FLOAT64 ? ((const double *)c->values)[base + i]
                                                    : (double)((const float *)c->values)[base + i];
            uint64_t bits;
            memcpy(&bits, &x, sizeof(bits));
            out[i] = isnan(x) ? (uint8_t)has_nan : (uint8_t)set_has_u64(set, in->len, bits);
        }
    } else if (ktype_is_string(c->type)) {
        for (int64_t i = 0; i < n; i++) {
            int64_t len;
            const uint8_t *s = kstr_at(c, base + i, &len);
            out[i] = (uint8_t)set_has_str(in, s, len);
        }
    } else if (c->type == DPDPU_COL_UINT64) {
        const uint64_t *p = (const uint64_t *)c->values + base;
        for (int64_t i = 0; i < n; i++)
            out[i] = (uint8_t)set_has_u64((const uint64_t *)in->ptr, in->len, p[i]);
    } else if (c->type == DPDPU_COL_INT64) {
        const int64_t *p = (const int64_t *)c->values + base;
        for (int64_t i = 0; i < n; i++)
            out[i] = (uint8_t)set_has_i64((const int64_t *)in->ptr, in->len, p[i]);
    } else if (ktype_is_int(c->type) || c->type == DPDPU_COL_BOOL) {
        for (int64_t i = 0; i < n; i++)
            out[i] = (uint8_t)set_has_i64((const int64_t *)in->ptr, in->len, kint_at(c, base + i));
    } else {
        memset(out, 0, (size_t)n);
    }
}

/* A leaf instruction over rows [r, r + n) of a plain column. */
static void leaf_plain(const struct dpdpu_kinsn *in, const struct dpdpu_column *c, int64_t r, int64_t n, uint8_t *val,
                       uint8_t *valid, uint8_t *all_valid)
{
    int ok = c->type == DPDPU_COL_NULL ? (memset(valid, 0, (size_t)n), 0) : dpdpu__valid_bytes(c, r, n, valid);

    switch (in->code) {
    case DPDPU_K_CMP_LIT:
        if (c->type != DPDPU_COL_NULL)
            cmp_lit_values(in, c, r, n, val);
        if (!ok)
            for (int64_t i = 0; i < n; i++)
                val[i] &= valid[i];
        *all_valid = (uint8_t)ok;
        return;
    case DPDPU_K_VALID_CONST: {
        uint8_t k = in->i64 != 0;
        if (ok)
            memset(val, k, (size_t)n);
        else
            for (int64_t i = 0; i < n; i++)
                val[i] = valid[i] & k;
        *all_valid = (uint8_t)ok;
        return;
    }
    case DPDPU_K_IS_IN: {
        uint8_t has_null = (in->flags & DPDPU_KF_HAS_NULL) != 0;
        if (c->type != DPDPU_COL_NULL)
            is_in_values(in, c, r, n, val);
        if (!ok)
            for (int64_t i = 0; i < n; i++)
                val[i] = valid[i] ? val[i] : has_null;
        *all_valid = 1;
        return;
    }
    case DPDPU_K_IS_NULL: {
        uint8_t neg = (in->flags & DPDPU_KF_NEGATE) != 0;
        if (ok)
            memset(val, neg, (size_t)n);
        else
            for (int64_t i = 0; i < n; i++)
                val[i] = valid[i] ^ 1 ^ neg;
        *all_valid = 1;
        return;
    }
    default:
        memset(val, 0, (size_t)n);
        *all_valid = 1;
    }
}

static int is_leaf(const struct dpdpu_kinsn *in)
{
    return in->code == DPDPU_K_CMP_LIT || in->code == DPDPU_K_VALID_CONST || in->code == DPDPU_K_IS_IN ||
           (in->code == DPDPU_K_IS_NULL && (in->flags & DPDPU_KF_COLUMN));
}

/* Map a dictionary leaf's per-entry result through the indices of rows [r, r + n). */
#define DICT_LOOKUP(T)                                                                                         \
    do {                                                                                                       \
        const T *ix = (const T *)c->values + c->offset + r;                                                    \
        if (idx_ok) {                                                                                          \
            for (int64_t i = 0; i < n; i++)                                                                    \
                val[i] = d->val[ix[i]];                                                                        \
            if (!av)                                                                                           \
                for (int64_t i = 0; i < n; i++)                                                                \
                    valid[i] = d->valid[ix[i]];                                                                \
        } else {                                                                                               \
            for (int64_t i = 0; i < n; i++) {                                                                  \
                int64_t k = ix_valid[i] ? (int64_t)ix[i] : -1;                                                 \
                val[i] = k >= 0 ? d->val[k] : d->null_val;                                                     \
                valid[i] = k >= 0 ? (av ? 1 : d->valid[k]) : d->null_valid;                                    \
            }                                                                                                  \
        }                                                                                                      \
    } while (0)

static void leaf_dict(const struct kprog *p, const struct kdict_leaf *d, const struct dpdpu_column *c, int64_t r,
                      int64_t n, struct kreg *dst, int dict_all_valid)
{
    uint8_t *val = dst->v.b, *valid = dst->valid, *ix_valid = p->scratch;
    int idx_ok = dpdpu__valid_bytes_plain_index(c, r, n, ix_valid);
    int av = dict_all_valid;

    switch (c->type) {
    case DPDPU_COL_INT8:
        DICT_LOOKUP(int8_t);
        break;
    case DPDPU_COL_INT16:
        DICT_LOOKUP(int16_t);
        break;
    case DPDPU_COL_INT32:
        DICT_LOOKUP(int32_t);
        break;
    case DPDPU_COL_INT64:
        DICT_LOOKUP(int64_t);
        break;
    case DPDPU_COL_UINT8:
        DICT_LOOKUP(uint8_t);
        break;
    case DPDPU_COL_UINT16:
        DICT_LOOKUP(uint16_t);
        break;
    case DPDPU_COL_UINT32:
        DICT_LOOKUP(uint32_t);
        break;
    default:
        DICT_LOOKUP(uint64_t);
        break;
    }
    if (idx_ok && av) {
        dst->all_valid = 1;
    } else {
        int all = 1;
        for (int64_t i = 0; i < n; i++)
            all &= valid[i];
        dst->all_valid = (uint8_t)all;
    }
}

/* --- loading a column into a register ---------------------------------------- */

#define LOAD_PLAIN(T, DT, OUT)                                                                                 \
    do {                                                                                                       \
        const T *src = (const T *)v->values + v->offset + r;                                                   \
        for (int64_t i = 0; i < n; i++)                                                                        \
            OUT[i] = (DT)src[i];                                                                               \
    } while (0)

#define LOAD_DICT(T, DT, OUT)                                                                                  \
    do {                                                                                                       \
        const T *src = (const T *)v->values + v->offset;                                                       \
        for (int64_t i = 0; i < n; i++)                                                                        \
            OUT[i] = idx[i] >= 0 ? (DT)src[idx[i]] : (DT)0;                                                    \
    } while (0)

#define LOAD_ANY(LOADER, DT, OUT)                                                                              \
    do {                                                                                                       \
        switch (v->type) {                                                                                     \
        case DPDPU_COL_INT8:                                                                                   \
            LOADER(int8_t, DT, OUT);                                                                           \
            break;                                                                                             \
        case DPDPU_COL_INT16:                                                                                  \
            LOADER(int16_t, DT, OUT);                                                                          \
            break;                                                                                             \
        case DPDPU_COL_INT32:                                                                                  \
            LOADER(int32_t, DT, OUT);                                                                          \
            break;                                                                                             \
        case DPDPU_COL_INT64:                                                                                  \
            LOADER(int64_t, DT, OUT);                                                                          \
            break;                                                                                             \
        case DPDPU_COL_UINT8:                                                                                  \
            LOADER(uint8_t, DT, OUT);                                                                          \
            break;                                                                                             \
        case DPDPU_COL_UINT16:                                                                                 \
            LOADER(uint16_t, DT, OUT);                                                                         \
            break;                                                                                             \
        case DPDPU_COL_UINT32:                                                                                 \
            LOADER(uint32_t, DT, OUT);                                                                         \
            break;                                                                                             \
        case DPDPU_COL_UINT64:                                                                                 \
            LOADER(uint64_t, DT, OUT);                                                                         \
            break;                                                                                             \
        case DPDPU_COL_FLOAT32:                                                                                \
            LOADER(float, DT, OUT);                                                                            \
            break;                                                                                             \
        case DPDPU_COL_FLOAT64:                                                                                \
            LOADER(double, DT, OUT);                                                                           \
            break;                                                                                             \
        default:                                                                                               \
            break;                                                                                             \
        }                                                                                                      \
    } while (0)

static void load_column(const struct kprog *p, const struct dpdpu_column *c, int64_t r, int64_t n, struct kreg *dst)
{
    const struct dpdpu_column *v = kvalues_of(c);
    int ok;

    if (c->type == DPDPU_COL_NULL || v->type == DPDPU_COL_NULL) {
        memset(dst->v.p, 0, (size_t)n * (dst->kind == DPDPU_KIND_BOOL ? 1 : 8));
        memset(dst->valid, 0, (size_t)n);
        dst->all_valid = 0;
        return;
    }
    ok = dpdpu__valid_bytes(c, r, n, dst->valid);
    dst->all_valid = (uint8_t)ok;
    if (c->dictionary == NULL) {
        if (v->type == DPDPU_COL_BOOL) {
            uint8_t *b = dst->kind == DPDPU_KIND_BOOL ? dst->v.b : p->scratch;
            dpdpu__unpack_bits((const uint8_t *)v->values, v->offset + r, n, b);
            if (dst->kind == DPDPU_KIND_I64)
                for (int64_t i = 0; i < n; i++)
                    dst->v.i[i] = b[i];
            else if (dst->kind == DPDPU_KIND_F64)
                for (int64_t i = 0; i < n; i++)
                    dst->v.f[i] = b[i];
        } else if (dst->kind == DPDPU_KIND_I64) {
            LOAD_ANY(LOAD_PLAIN, int64_t, dst->v.i);
        } else {
            LOAD_ANY(LOAD_PLAIN, double, dst->v.f);
        }
    } else {
        /* Element of the dictionary per row, -1 for a null index. */
        int64_t idx[KBLOCK];
        for (int64_t i = 0; i < n; i++)
            idx[i] = kplain_valid(c, r + i) ? kint_at(c, c->offset + r + i) : -1;
        if (v->type == DPDPU_COL_BOOL) {
            uint8_t *b = p->scratch;
            for (int64_t i = 0; i < n; i++)
                b[i] = idx[i] >= 0 ? (uint8_t)kbit((const uint8_t *)v->values, v->offset + idx[i]) : 0;
            for (int64_t i = 0; i < n; i++) {
                if (dst->kind == DPDPU_KIND_BOOL)
                    dst->v.b[i] = b[i];
                else if (dst->kind == DPDPU_KIND_I64)
                    dst->v.i[i] = b[i];
                else
                    dst->v.f[i] = b[i];
            }
        } else if (dst->kind == DPDPU_KIND_I64) {
            LOAD_ANY(LOAD_DICT, int64_t, dst->v.i);
        } else {
            LOAD_ANY(LOAD_DICT, double, dst->v.f);
        }
    }
    if (dst->kind == DPDPU_KIND_BOOL && !ok)
        for (int64_t i = 0; i < n; i++)
            dst->v.b[i] &= dst->valid[i];
}

/* --- register operations ------------------------------------------------------- */

/* dst validity = a's and b's; returns 1 if every row is valid. */
static int both_valid(struct kreg *dst, const struct kreg *a, const struct kreg *b, int64_t n)
{
    if (a->all_valid && b->all_valid)
        return dst->all_valid = 1;
    dst->all_valid = 0;
    if (a->all_valid)
        memcpy(dst->valid, b->valid, (size_t)n);
    else if (b->all_valid)
        memcpy(dst->valid, a->valid, (size_t)n);
    else
        for (int64_t i = 0; i < n; i++)
            dst->valid[i] = a->valid[i] & b->valid[i];
    return 0;
}

#define CMP_REGS(A, B)                                                                                         \
    do {                                                                                                       \
        switch (in->cmp) {                                                                                     \
        case DPDPU_KCMP_EQ:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] == (B)[i];                                                                     \
            break;                                                                                             \
        case DPDPU_KCMP_NE:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] != (B)[i];                                                                     \
            break;                                                                                             \
        case DPDPU_KCMP_LT:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] < (B)[i];                                                                      \
            break;                                                                                             \
        case DPDPU_KCMP_LE:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] <= (B)[i];                                                                     \
            break;                                                                                             \
        case DPDPU_KCMP_GT:                                                                                    \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] > (B)[i];                                                                      \
            break;                                                                                             \
        default:                                                                                               \
            for (int64_t i = 0; i < n; i++)                                                                    \
                out[i] = (A)[i] >= (B)[i];                                                                     \
            break;                                                                                             \
        }                                                                                                      \
    } while (0)

static void op_cmp(const struct dpdpu_kinsn *in, struct kreg *dst, const struct kreg *a, const struct kreg *b,
                   int64_t n)
{
    uint8_t *out = dst->v.b;
    if (a->kind == DPDPU_KIND_I64)
        CMP_REGS(a->v.i, b->v.i);
    else if (a->kind == DPDPU_KIND_F64)
        CMP_REGS(a->v.f, b->v.f);
    else
        CMP_REGS(a->v.b, b->v.b);
    if (!both_valid(dst, a, b, n))
        for (int64_t i = 0; i < n; i++)
            out[i] &= dst->valid[i];
}

static void op_cmp_str(const struct dpdpu_kinsn *in, const struct dpdpu_column *ca, const struct dpdpu_column *cb,
                       int64_t r, int64_t n, struct kreg *dst)
{
    const struct dpdpu_column *va = kvalues_of(ca), *vb = kvalues_of(cb);
    int all = 1;
    for (int64_t i = 0; i < n; i++) {
        int64_t ea = kresolve(ca, r + i), eb = kresolve(cb, r + i), la, lb;
        if (ea < 0 || eb < 0) {
            dst->v.b[i] = 0;
            dst->valid[i] = 0;
            all = 0;
            continue;
        }
        const uint8_t *sa = kstr_at(va, ea, &la), *sb = kstr_at(vb, eb, &lb);
        dst->v.b[i] = (uint8_t)kcmp_holds(in->cmp, kstr_cmp(sa, la, sb, lb));
        dst->valid[i] = 1;
    }
    dst->all_valid = (uint8_t)all;
}

static void op_logic(const struct dpdpu_kinsn *in, struct kreg *dst, const struct kreg *a, const struct kreg *b,
                     int64_t n)
{
    uint8_t *o = dst->v.b, *ov = dst->valid;
    const uint8_t *x = a->v.b, *y = b->v.b;

    if (a->all_valid && b->all_valid) {
        if (in->code == DPDPU_K_AND)
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] & y[i];
        else
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] | y[i];
        dst->all_valid = 1;
        return;
    }
    /* Bools are 0 where null, so "known false" is valid & !value. */
    const uint8_t *xv = a->all_valid ? NULL : a->valid, *yv = b->all_valid ? NULL : b->valid;
    int all = 1;
    for (int64_t i = 0; i < n; i++) {
        uint8_t av = xv ? xv[i] : 1, bv = yv ? yv[i] : 1;
        if (in->code == DPDPU_K_AND) {
            o[i] = x[i] & y[i];
            ov[i] = o[i] | (av & (x[i] ^ 1)) | (bv & (y[i] ^ 1));
        } else {
            o[i] = x[i] | y[i];
            ov[i] = o[i] | (av & bv);
        }
        all &= ov[i];
    }
    dst->all_valid = (uint8_t)all;
}

static void op_arith(const struct dpdpu_kinsn *in, struct kreg *dst, const struct kreg *a, const struct kreg *b,
                     int64_t n)
{
    if (dst->kind == DPDPU_KIND_I64) {
        /* Unsigned arithmetic wraps where signed overflow would be undefined. */
        const uint64_t *x = (const uint64_t *)a->v.i, *y = (const uint64_t *)b->v.i;
        uint64_t *o = (uint64_t *)dst->v.i;
        switch (in->code) {
        case DPDPU_K_ADD:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] + y[i];
            break;
        case DPDPU_K_SUB:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] - y[i];
            break;
        default:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] * y[i];
            break;
        }
    } else {
        const double *x = a->v.f, *y = b->v.f;
        double *o = dst->v.f;
        switch (in->code) {
        case DPDPU_K_ADD:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] + y[i];
            break;
        case DPDPU_K_SUB:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] - y[i];
            break;
        case DPDPU_K_MUL:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] * y[i];
            break;
        default:
            for (int64_t i = 0; i < n; i++)
                o[i] = x[i] / y[i];
            break;
        }
    }
    both_valid(dst, a, b, n);
}

static void copy_valid(struct kreg *dst, const struct kreg *a, int64_t n)
{
    dst->all_valid = a->all_valid;
    if (!a->all_valid)
        memcpy(dst->valid, a->valid, (size_t)n);
}

static void exec_insn(struct kprog *p, uint32_t k, int64_t r, int64_t n)
{
    const struct dpdpu_kernel_job *job = p->job;
    const struct dpdpu_kinsn *in = &job->insns[k];
    struct kreg *dst = &p->regs[in->dst];
    const struct kreg *a = NULL, *b = NULL;

    if (is_leaf(in)) {
        const struct dpdpu_column *c = &job->columns[in->a];
        if (c->dictionary != NULL && c->type != DPDPU_COL_NULL) {
            const struct dpdpu_column *dict = c->dictionary;
            leaf_dict(p, &p->leaves[k], c, r, n, dst, dict->validity == NULL || dict->null_count == 0 ||
                                                          in->code == DPDPU_K_IS_IN || in->code == DPDPU_K_IS_NULL);
        } else {
            leaf_plain(in, c, r, n, dst->v.b, dst->valid, &dst->all_valid);
        }
        return;
    }
    switch (in->code) {
    case DPDPU_K_COLUMN:
        load_column(p, &job->columns[in->a], r, n, dst);
        return;
    case DPDPU_K_LITERAL:
        if (in->flags & DPDPU_KF_NULL) {
            memset(dst->v.p, 0, (size_t)n * (dst->kind == DPDPU_KIND_BOOL ? 1 : 8));
            memset(dst->valid, 0, (size_t)n);
            dst->all_valid = 0;
            return;
        }
        if (dst->kind == DPDPU_KIND_BOOL)
            memset(dst->v.b, in->i64 != 0, (size_t)n);
        else if (dst->kind == DPDPU_KIND_I64)
            for (int64_t i = 0; i < n; i++)
                dst->v.i[i] = in->i64;
        else
            for (int64_t i = 0; i < n; i++)
                dst->v.f[i] = in->f64;
        dst->all_valid = 1;
        return;
    case DPDPU_K_CMP_STR:
        op_cmp_str(in, &job->columns[in->a], &job->columns[in->b], r, n, dst);
        return;
    default:
        break;
    }
    a = &p->regs[in->a];
    if (in->b >= 0)
        b = &p->regs[in->b];
    switch (in->code) {
    case DPDPU_K_CMP:
        op_cmp(in, dst, a, b, n);
        break;
    case DPDPU_K_IS_NULL: {
        uint8_t neg = (in->flags & DPDPU_KF_NEGATE) != 0;
        if (a->all_valid)
            memset(dst->v.b, neg, (size_t)n);
        else
            for (int64_t i = 0; i < n; i++)
                dst->v.b[i] = a->valid[i] ^ 1 ^ neg;
        dst->all_valid = 1;
        break;
    }
    case DPDPU_K_AND:
    case DPDPU_K_OR:
        op_logic(in, dst, a, b, n);
        break;
    case DPDPU_K_NOT:
        for (int64_t i = 0; i < n; i++)
            dst->v.b[i] = (a->all_valid || a->valid[i]) & (a->v.b[i] ^ 1);
        copy_valid(dst, a, n);
        break;
    case DPDPU_K_ADD:
    case DPDPU_K_SUB:
    case DPDPU_K_MUL:
    case DPDPU_K_DIV:
        op_arith(in, dst, a, b, n);
        break;
    case DPDPU_K_NEG:
        if (dst->kind == DPDPU_KIND_I64)
            for (int64_t i = 0; i < n; i++)
                dst->v.i[i] = (int64_t)(0 - (uint64_t)a->v.i[i]);
        else
            for (int64_t i = 0; i < n; i++)
                dst->v.f[i] = -a->v.f[i];
        copy_valid(dst, a, n);
        break;
    case DPDPU_K_TO_F64:
        if (a->kind == DPDPU_KIND_BOOL)
            for (int64_t i = 0; i < n; i++)
                dst->v.f[i] = a->v.b[i];
        else
            for (int64_t i = 0; i < n; i++)
                dst->v.f[i] = (double)a->v.i[i];
        copy_valid(dst, a, n);
        break;
    default:
        break;
    }
}

void dpdpu__kprog_eval(struct kprog *p, int64_t r, int64_t n)
{
    for (uint32_t k = 0; k < p->job->n_insns; k++)
        exec_insn(p, k, r, n);
}

/* --- checking and setting up ------------------------------------------------------- */

static int check_column(struct dpdpu_kernel_job *job, uint32_t k, int32_t col, const struct dpdpu_column **out)
{
    if (col < 0 || (uint32_t)col >= job->n_columns)
        return dpdpu__kfail(job, "instruction %u names column %d of %u", k, col, job->n_columns);
    *out = &job->columns[col];
    return DPDPU_OK;
}

static int check_program(struct dpdpu_kernel_job *job, int8_t *kinds)
{
    for (uint32_t k = 0; k < job->n_insns; k++) {
        const struct dpdpu_kinsn *in = &job->insns[k];
        const struct dpdpu_column *c = NULL, *v = NULL;
        int rc;
        int want_a = -1; /* kind register a must have; -2: any */
        int want_b = -1;
        int col_a = 0;

        if (in->dst < 0 || (uint32_t)in->dst >= job->n_regs || kinds[in->dst] >= 0)
            return dpdpu__kfail(job, "instruction %u writes register %d twice or out of range", k, in->dst);
        if (in->kind > DPDPU_KIND_F64)
            return dpdpu__kfail(job, "instruction %u has kind %u", k, in->kind);
        if (in->cmp > DPDPU_KCMP_GE)
            return dpdpu__kfail(job, "instruction %u has comparison %u", k, in->cmp);
        switch (in->code) {
        case DPDPU_K_COLUMN:
            col_a = 1;
            break;
        case DPDPU_K_LITERAL:
            break;
        case DPDPU_K_CMP_LIT:
        case DPDPU_K_IS_IN:
        case DPDPU_K_VALID_CONST:
            col_a = 1;
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            break;
        case DPDPU_K_CMP_STR:
            col_a = 1;
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            break;
        case DPDPU_K_CMP:
            want_a = -2;
            want_b = -3; /* same as a */
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            break;
        case DPDPU_K_IS_NULL:
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            if (in->flags & DPDPU_KF_COLUMN)
                col_a = 1;
            else
                want_a = -2;
            break;
        case DPDPU_K_AND:
        case DPDPU_K_OR:
            want_a = want_b = DPDPU_KIND_BOOL;
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            break;
        case DPDPU_K_NOT:
            want_a = DPDPU_KIND_BOOL;
            if (in->kind != DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u must give a bool", k);
            break;
        case DPDPU_K_ADD:
        case DPDPU_K_SUB:
        case DPDPU_K_MUL:
        case DPDPU_K_DIV:
            if (in->kind == DPDPU_KIND_BOOL || (in->code == DPDPU_K_DIV && in->kind != DPDPU_KIND_F64))
                return dpdpu__kfail(job, "instruction %u: arithmetic of kind %u", k, in->kind);
            want_a = want_b = in->kind;
            break;
        case DPDPU_K_NEG:
            if (in->kind == DPDPU_KIND_BOOL)
                return dpdpu__kfail(job, "instruction %u: arithmetic of kind %u", k, in->kind);
            want_a = in->kind;
            break;
        case DPDPU_K_TO_F64:
            if (in->kind != DPDPU_KIND_F64)
                return dpdpu__kfail(job, "instruction %u must give a double", k);
            want_a = -2;
            break;
        default:
            return dpdpu__kfail(job, "instruction %u has unknown code %u", k, in->code);
        }
        if (col_a) {
            if ((rc = check_column(job, k, in->a, &c)) != DPDPU_OK)
                return rc;
            v = kvalues_of(c);
            if (c->dictionary != NULL && !ktype_is_int(c->type) && c->type != DPDPU_COL_NULL)
                return dpdpu__kfail(job, "instruction %u: dictionary indices must be integers", k);
            if (c->dictionary != NULL && c->dictionary->dictionary != NULL)
                return dpdpu__kfail(job, "instruction %u: nested dictionary", k);
        }
        switch (in->code) {
        case DPDPU_K_COLUMN:
            if (!(ktype_is_numeric(v->type) || v->type == DPDPU_COL_NULL) ||
                (ktype_is_float(v->type) && in->kind != DPDPU_KIND_F64) ||
                (in->kind == DPDPU_KIND_BOOL && v->type != DPDPU_COL_BOOL && v->type != DPDPU_COL_NULL))
                return dpdpu__kfail(job, "instruction %u cannot read column %d (type %u) as kind %u", k, in->a,
                                    v->type, in->kind);
            break;
        case DPDPU_K_CMP_LIT:
            if (!(ktype_is_numeric(v->type) || ktype_is_string(v->type) || v->type == DPDPU_COL_NULL) ||
                (ktype_is_string(v->type) && in->ptr == NULL && in->len != 0) || in->len < 0)
                return dpdpu__kfail(job, "instruction %u cannot compare column %d (type %u)", k, in->a, v->type);
            break;
        case DPDPU_K_IS_IN:
            if (!(ktype_is_numeric(v->type) || ktype_is_string(v->type) || v->type == DPDPU_COL_NULL) ||
                in->len < 0 || (in->len > 0 && in->ptr == NULL) ||
                (ktype_is_string(v->type) && in->len > 0 && in->aux == NULL))
                return dpdpu__kfail(job, "instruction %u: bad set for column %d (type %u)", k, in->a, v->type);
            break;
        case DPDPU_K_CMP_STR: {
            const struct dpdpu_column *cb = NULL;
            if ((rc = check_column(job, k, in->b, &cb)) != DPDPU_OK)
                return rc;
            if (!ktype_is_string(v->type) || !ktype_is_string(kvalues_of(cb)->type) ||
                (cb->dictionary != NULL && !ktype_is_int(cb->type)))
                return dpdpu__kfail(job, "instruction %u compares non-string columns", k);
            break;
        }
        default:
            break;
        }
        if (want_a != -1) {
            if (in->a < 0 || (uint32_t)in->a >= job->n_regs || kinds[in->a] < 0)
                return dpdpu__kfail(job, "instruction %u reads register %d before it is written", k, in->a);
            if (want_a >= 0 && kinds[in->a] != want_a)
                return dpdpu__kfail(job, "instruction %u: register %d has kind %d", k, in->a, kinds[in->a]);
            if (in->code == DPDPU_K_TO_F64 && kinds[in->a] == DPDPU_KIND_F64)
                return dpdpu__kfail(job, "instruction %u converts a double", k);
        }
        if (want_b != -1) {
            if (in->b < 0 || (uint32_t)in->b >= job->n_regs || kinds[in->b] < 0)
                return dpdpu__kfail(job, "instruction %u reads register %d before it is written", k, in->b);
            int need = want_b == -3 ? kinds[in->a] : want_b;
            if (kinds[in->b] != need)
                return dpdpu__kfail(job, "instruction %u: register %d has kind %d", k, in->b, kinds[in->b]);
        }
        kinds[in->dst] = (int8_t)in->kind;
    }
    return DPDPU_OK;
}

int dpdpu__kprog_new(struct dpdpu_kernel_job *job, struct kprog **out)
{
    struct kprog *p;
    int8_t *kinds;
    int rc;

    *out = NULL;
    if (job->n_insns > 0 && job->insns == NULL)
        return dpdpu__kfail(job, "no instructions");
    if (job->n_regs > 4096 || job->n_insns > 4096)
        return dpdpu__kfail(job, "program too large");
    kinds = malloc(job->n_regs + 1);
    if (kinds == NULL)
        return DPDPU_ERR_NO_MEMORY;
    memset(kinds, -1, job->n_regs + 1);
    rc = check_program(job, kinds);
    free(kinds);
    if (rc != DPDPU_OK)
        return rc;

    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return DPDPU_ERR_NO_MEMORY;
    p->job = job;
    p->n_regs = job->n_regs;
    p->regs = calloc(job->n_regs + 1, sizeof(*p->regs));
    p->leaves = calloc(job->n_insns + 1, sizeof(*p->leaves));
    p->block = dpdpu__kalloc((size_t)(job->n_regs + 1) * KBLOCK * 9);
    p->scratch = dpdpu__kalloc(KBLOCK);
    if (p->regs == NULL || p->leaves == NULL || p->block == NULL || p->scratch == NULL) {
        dpdpu__kprog_free(p);
        return DPDPU_ERR_NO_MEMORY;
    }
    for (uint32_t i = 0; i < job->n_regs; i++) {
        uint8_t *base = (uint8_t *)p->block + (size_t)i * KBLOCK * 9;
        p->regs[i].v.p = base;
        p->regs[i].valid = base + (size_t)KBLOCK * 8;
        p->regs[i].all_valid = 1;
    }
    for (uint32_t k = 0; k < job->n_insns; k++) {
        const struct dpdpu_kinsn *in = &job->insns[k];
        p->regs[in->dst].kind = in->kind;
        if (!is_leaf(in))
            continue;
        const struct dpdpu_column *c = &job->columns[in->a];
        if (c->dictionary == NULL || c->type == DPDPU_COL_NULL)
            continue;
        const struct dpdpu_column *d = c->dictionary;
        struct kdict_leaf *leaf = &p->leaves[k];
        int64_t len = d->length;
        uint8_t all;
        leaf->val = dpdpu__kalloc((size_t)len + 1);
        leaf->valid = dpdpu__kalloc((size_t)len + 1);
        if (leaf->val == NULL || leaf->valid == NULL) {
            dpdpu__kprog_free(p);
            return DPDPU_ERR_NO_MEMORY;
        }
        for (int64_t r = 0; r < len; r += KBLOCK) {
            int64_t m = len - r < KBLOCK ? len - r : KBLOCK;
            leaf_plain(in, d, r, m, leaf->val + r, leaf->valid + r, &all);
            if (all)
                memset(leaf->valid + r, 1, (size_t)m);
        }
        /* What a null index gives, as leaf_plain would for a null value. */
        switch (in->code) {
        case DPDPU_K_IS_IN:
            leaf->null_val = (in->flags & DPDPU_KF_HAS_NULL) != 0;
            leaf->null_valid = 1;
            break;
        case DPDPU_K_IS_NULL:
            leaf->null_val = (in->flags & DPDPU_KF_NEGATE) == 0;
            leaf->null_valid = 1;
            break;
        default:
            leaf->null_val = 0;
            leaf->null_valid = 0;
        }
    }
    *out = p;
    return DPDPU_OK;
}

void dpdpu__kprog_free(struct kprog *p)
{
    if (p == NULL)
        return;
    if (p->leaves != NULL)
        for (uint32_t k = 0; k < p->job->n_insns; k++) {
            free(p->leaves[k].val);
            free(p->leaves[k].valid);
        }
    free(p->leaves);
    free(p->regs);
    free(p->block);
    free(p->scratch);
    free(p);
}
