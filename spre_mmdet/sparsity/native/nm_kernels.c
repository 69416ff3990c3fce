/* Fused CPU kernels for the per-step work of the sparse methods (see native/__init__.py).
 *
 * Each kernel reads the float32 weights once per pass and writes its result directly; the
 * eager PyTorch code in nm.py / spre.py is the reference they must match exactly.
 *
 * Magnitudes are compared as the bit patterns of |w| (non-negative floats order as their
 * bits), with NaN and infinity mapped as the reference maps them:
 *   - N:M masks: +-inf ties with the largest float, every NaN ranks above all numbers;
 *   - SpRe's S (an unstructured selection): +-inf above every float, NaN above inf.
 *
 * Work is split into contiguous ranges over all layers of a call, one pthread each.
 */
#include <pthread.h>
/* SPRE_MMDET_PORTABLE builds what a compiler without SSE2 or vector shuffles gets (the tests
 * build it too) */
#if defined(__SSE2__) && !defined(SPRE_MMDET_PORTABLE)
#define HAVE_SSE2 1
#include <emmintrin.h>
#endif
#include <math.h> /* INFINITY */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ABS_BITS 0x7fffffffu
#define INF_BITS 0x7f800000u
#define FLOAT_MAX_BITS 0x7f7fffffu
#define MAX_M 128
#define MAX_THREADS 256

/* GCC/clang vector extensions: SSE2, NEON, ... (no target flags; SSE2 intrinsics only to
 * pack mask bytes, where available) */
typedef int32_t v4i __attribute__((vector_size(16)));
/* shuffles (the m = 4 ranking of 1x1 weights) need GCC >= 12 or clang */
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && \
    !defined(SPRE_MMDET_PORTABLE)
#define HAVE_SHUFFLES 1
#endif

static inline uint32_t bits_of(const float *p) {
    uint32_t b;
    memcpy(&b, p, sizeof b);
    return b & ABS_BITS;
}

/* |w| as ranked by the N:M masks: inf -> largest float, NaN -> one value above it. */
static inline uint32_t nm_key(const float *p) {
    const uint32_t b = bits_of(p);
    return b > INF_BITS ? INF_BITS : b == INF_BITS ? FLOAT_MAX_BITS : b;
}

/* |w| as selected by the unstructured mask: inf above every float, NaN above inf. */
static inline uint32_t unstructured_key(const float *p) {
    uint32_t b = bits_of(p);
    return b > INF_BITS ? INF_BITS + 1 : b;
}

/* ---------------------------------------------------------------- threads */

typedef void (*range_fn)(void *args, int64_t begin, int64_t end, int worker);

typedef struct {
    range_fn fn;
    void *args;
    int64_t begin, end;
    int worker;
} job_t;

static void *run_job(void *p) {
    job_t *job = (job_t *)p;
    job->fn(job->args, job->begin, job->end, job->worker);
    return NULL;
}

/* fn over [0, total) in `threads` contiguous ranges (the calling thread takes the first). */
static void parallel_for(range_fn fn, void *args, int64_t total, int threads) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > total) threads = total > 0 ? (int)total : 1;
    job_t jobs[MAX_THREADS];
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS];
    for (int t = 0; t < threads; ++t) {
        jobs[t].fn = fn;
        jobs[t].args = args;
        jobs[t].begin = total * t / threads;
        jobs[t].end = total * (t + 1) / threads;
        jobs[t].worker = t;
        started[t] = 0;
    }
    for (int t = 1; t < threads; ++t)
        started[t] = pthread_create(&handles[t], NULL, run_job, &jobs[t]) == 0;
    run_job(&jobs[0]);
    for (int t = 1; t < threads; ++t) {
        if (started[t])
            pthread_join(handles[t], NULL);
        else
            run_job(&jobs[t]); /* could not start a thread: do its share here */
    }
}

/* ---------------------------------------------------------------- N:M masks */

typedef struct {
    int num;
    const float *const *weights;
    uint8_t *const *masks;
    const int64_t *rows;    /* O*C/m per layer */
    const int64_t *kernels; /* K = kh*kw per layer */
    const int64_t *first_row; /* global index of each layer's first row (prefix sums) */
    int n, m;
} nm_args_t;

/* Rank the m members (stride k) of each group position: rank[j] counts the members that
 * beat member j (a larger key, or an equal one at a lower channel index); keep rank < n. */
static void nm_rows(const float *w, uint8_t *mask, int64_t row_begin, int64_t row_end,
                    int64_t k, int n, int m) {
    uint32_t key[MAX_M];
    for (int64_t r = row_begin; r < row_end; ++r) {
        const float *wr = w + r * m * k;
        uint8_t *mr = mask + r * m * k;
        for (int64_t p = 0; p < k; ++p) {
            for (int j = 0; j < m; ++j) key[j] = nm_key(wr + j * k + p);
            for (int j = 0; j < m; ++j) {
                int rank = 0;
                const uint32_t v = key[j];
                for (int i = 0; i < j; ++i) rank += key[i] >= v;
                for (int i = j + 1; i < m; ++i) rank += key[i] > v;
                mr[j * k + p] = rank < n;
            }
        }
    }
}

/* The mask bytes of members a, b, c, d of one group (m = 4, unrolled): member j loses to an
 * earlier member that is >=, to a later one that is > (branch-free: the loops vectorize). */
#define NM4(a, b, c, d, n, m0, m1, m2, m3)                                                  \
    do {                                                                                    \
        const int ab = (a) >= (b), ac = (a) >= (c), ad = (a) >= (d), bc = (b) >= (c),       \
                  bd = (b) >= (d), cd = (c) >= (d);                                         \
        m0 = 3 - ab - ac - ad < (n);                                                        \
        m1 = ab + 2 - bc - bd < (n);                                                        \
        m2 = ac + bc + 1 - cd < (n);                                                        \
        m3 = ad + bd + cd < (n);                                                            \
    } while (0)

static inline v4i splat(int32_t x) { return (v4i){x, x, x, x}; }

static inline v4i load_bits(const float *p) {
    v4i b;
    memcpy(&b, p, sizeof b);
    return b;
}

/* nm_key of four values at once (their bits) */
static inline v4i nm_keys(v4i b) {
    b &= splat(ABS_BITS);
    const v4i nan = b > splat(INF_BITS), inf = b == splat(INF_BITS);
    return (b & ~(nan | inf)) | (splat(INF_BITS) & nan) | (splat(FLOAT_MAX_BITS) & inf);
}

/* NM4 on vectors: lane l of a, b, c, d holds the four members of one group; the ranks are
 * those of NM4 (a true comparison is -1 here). Writes the four 0/1 mask vectors. */
static inline void nm4_vectors(v4i a, v4i b, v4i c, v4i d, int n, v4i *m0, v4i *m1, v4i *m2,
                               v4i *m3) {
    const v4i ab = a >= b, ac = a >= c, ad = a >= d, bc = b >= c, bd = b >= d, cd = c >= d;
    const v4i limit = splat(n);
    *m0 = (splat(3) + ab + ac + ad < limit) & 1;
    *m1 = (splat(2) - ab + bc + bd < limit) & 1;
    *m2 = (splat(1) - ac - bc + cd < limit) & 1;
    *m3 = (-ad - bd - cd < limit) & 1;
}

/* Member j's mask bytes at four consecutive positions, for each of the four members
 * (k > 1: member-major runs). SSE2 packs them in two instructions; elsewhere lane by lane. */
static inline void store_members(uint8_t *o0, uint8_t *o1, uint8_t *o2, uint8_t *o3, v4i m0,
                                 v4i m1, v4i m2, v4i m3) {
#ifdef HAVE_SSE2
    uint8_t bytes[16];
    _mm_storeu_si128((__m128i *)bytes,
                     _mm_packus_epi16(_mm_packs_epi32((__m128i)m0, (__m128i)m1),
                                      _mm_packs_epi32((__m128i)m2, (__m128i)m3)));
    memcpy(o0, bytes, 4), memcpy(o1, bytes + 4, 4), memcpy(o2, bytes + 8, 4);
    memcpy(o3, bytes + 12, 4);
#else
    for (int l = 0; l < 4; ++l) {
        o0[l] = (uint8_t)m0[l], o1[l] = (uint8_t)m1[l], o2[l] = (uint8_t)m2[l];
        o3[l] = (uint8_t)m3[l];
    }
#endif
}

/* The same as nm_rows for m = 4 (the hardware pattern family 2:4 / 1:4), four groups per
 * step: for K >= 4 the members' runs of K positions are read four positions at a time (the
 * last four overlap the previous ones when K % 4: they are ranked again, to the same
 * bytes); 1x1 weights (K = 1) are transposed four groups at a time. */
static void nm_rows_m4(const float *restrict w, uint8_t *restrict mask, int64_t row_begin,
                       int64_t row_end, int64_t k, int n) {
    int64_t r = row_begin;
    v4i m0, m1, m2, m3;
#ifdef HAVE_SHUFFLES
    if (k == 1) { /* 1x1 convs and Linear: the four members are adjacent */
        for (; r + 4 <= row_end; r += 4) {
            const float *g = w + 4 * r;
            const v4i g0 = load_bits(g), g1 = load_bits(g + 4), g2 = load_bits(g + 8),
                      g3 = load_bits(g + 12);
            const v4i t0 = __builtin_shufflevector(g0, g1, 0, 4, 1, 5),
                      t1 = __builtin_shufflevector(g2, g3, 0, 4, 1, 5),
                      t2 = __builtin_shufflevector(g0, g1, 2, 6, 3, 7),
                      t3 = __builtin_shufflevector(g2, g3, 2, 6, 3, 7);
            nm4_vectors(nm_keys(__builtin_shufflevector(t0, t1, 0, 1, 4, 5)),
                        nm_keys(__builtin_shufflevector(t0, t1, 2, 3, 6, 7)),
                        nm_keys(__builtin_shufflevector(t2, t3, 0, 1, 4, 5)),
                        nm_keys(__builtin_shufflevector(t2, t3, 2, 3, 6, 7)), n, &m0, &m1, &m2,
                        &m3);
            /* lane g: group g's four mask bytes, little-endian: its 4 bytes in memory order */
            const v4i bytes = m0 | (m1 << 8) | (m2 << 16) | (m3 << 24);
            memcpy(mask + 4 * r, &bytes, sizeof bytes);
        }
    }
#endif
    if (k == 1) {
        for (; r < row_end; ++r) {
            const float *g = w + 4 * r;
            uint8_t *o = mask + 4 * r;
            const uint32_t a = nm_key(g), b = nm_key(g + 1), c = nm_key(g + 2),
                           d = nm_key(g + 3);
            NM4(a, b, c, d, n, o[0], o[1], o[2], o[3]);
        }
        return;
    }
    for (; r < row_end; ++r) {
        const float *w0 = w + r * 4 * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
        uint8_t *o0 = mask + r * 4 * k, *o1 = o0 + k, *o2 = o1 + k, *o3 = o2 + k;
        int64_t p = 0;
        if (k >= 4) {
            for (;; p += 4) {
                if (p + 4 > k) p = k - 4; /* the overlapping last four */
                nm4_vectors(nm_keys(load_bits(w0 + p)), nm_keys(load_bits(w1 + p)),
                            nm_keys(load_bits(w2 + p)), nm_keys(load_bits(w3 + p)), n, &m0,
                            &m1, &m2, &m3);
                store_members(o0 + p, o1 + p, o2 + p, o3 + p, m0, m1, m2, m3);
                if (p + 4 == k) break;
            }
            continue;
        }
        for (; p < k; ++p) { /* 1x2, 1x3, ... kernels */
            const uint32_t a = nm_key(w0 + p), b = nm_key(w1 + p), c = nm_key(w2 + p),
                           d = nm_key(w3 + p);
            NM4(a, b, c, d, n, o0[p], o1[p], o2[p], o3[p]);
        }
    }
}

static void nm_range(void *p, int64_t begin, int64_t end, int worker) {
    (void)worker;
    const nm_args_t *a = (const nm_args_t *)p;
    for (int l = 0; l < a->num; ++l) {
        const int64_t lo = a->first_row[l], hi = lo + a->rows[l];
        const int64_t b = begin > lo ? begin : lo, e = end < hi ? end : hi;
        if (b >= e) continue;
        if (a->m == 4)
            nm_rows_m4(a->weights[l], a->masks[l], b - lo, e - lo, a->kernels[l], a->n);
        else
            nm_rows(a->weights[l], a->masks[l], b - lo, e - lo, a->kernels[l], a->n, a->m);
    }
}

/* N:M masks of `num` contiguous float32 weights (O, C, *kernel) into their bool masks.
 * Returns 0, or -1 if m is out of range. */
int spre_nm_masks(int num, const float *const *weights, uint8_t *const *masks,
                  const int64_t *rows, const int64_t *kernels, int n, int m, int threads) {
    if (m < 2 || m > MAX_M || n < 1 || n >= m) return -1;
    int64_t *first_row = (int64_t *)malloc(sizeof(int64_t) * (num > 0 ? num : 1));
    if (!first_row) return -2;
    int64_t total_rows = 0;
    for (int l = 0; l < num; ++l) {
        first_row[l] = total_rows;
        total_rows += rows[l];
    }
    nm_args_t args = {num, weights, masks, rows, kernels, first_row, n, m};
    parallel_for(nm_range, &args, total_rows, threads);
    free(first_row);
    return 0;
}

/* ---------------------------------------------------------------- SpRe's S */

#define HIGH_BINS 32768 /* key >> 16 for keys <= INF_BITS + 1 */
#define LOW_BINS 65536

typedef struct {
    const float *w;
    int64_t positions;    /* K */
    uint32_t high;        /* pass 2: the high half of the threshold */
    uint32_t *high_counts; /* [threads][HIGH_BINS]; 32 bits: half the cache of 64 */
    int64_t *above;       /* [threads][K]: keys whose high half is above `high` */
    uint16_t *low;        /* the low halves of the keys whose high half is `high`, */
    int32_t *where;       /* and their positions, in flat order */
    int64_t *offset;      /* [threads]: where each range's entries start in low/where */
} spatial_args_t;

/* pass 1: a histogram of the keys' high halves */
static void high_pass(void *p, int64_t begin, int64_t end, int worker) {
    spatial_args_t *a = (spatial_args_t *)p;
    uint32_t *counts = a->high_counts + (int64_t)worker * HIGH_BINS;
    for (int64_t i = begin; i < end; ++i) ++counts[unstructured_key(a->w + i) >> 16];
}

/* One value of pass 2 at position `pos` (flat index i). */
#define BUCKET_STEP(i, pos)                                                                 \
    do {                                                                                    \
        const uint32_t h = unstructured_key(w + (i)) >> 16;                                 \
        count[pos] += h > high;                                                             \
        if (h == high) {                                                                    \
            low[next] = (uint16_t)(unstructured_key(w + (i)) & 0xffffu);                    \
            where[next++] = (int32_t)(pos);                                                 \
        }                                                                                   \
    } while (0)

/* Pass 2 over [begin, end) for k positions; inlined with k = 9 (3x3) as a constant, whole
 * rows then unroll and keep no position counter. Local pointers and counts: the compiler
 * cannot otherwise tell that the stores do not touch the weights. */
static inline void bucket_range(spatial_args_t *a, int64_t begin, int64_t end, int worker,
                                const int64_t k) {
    const float *restrict w = a->w;
    uint16_t *restrict low = a->low;
    int32_t *restrict where = a->where;
    int64_t count[64] = {0};
    int64_t *restrict above = a->above + worker * k;
    int64_t next = a->offset[worker];
    const uint32_t high = a->high;
    int64_t i = begin;
    for (int64_t pos = begin % k; i < end && pos && pos < k; ++i, ++pos) BUCKET_STEP(i, pos);
    for (; i + k <= end; i += k)
        for (int64_t pos = 0; pos < k; ++pos) BUCKET_STEP(i + pos, pos);
    for (int64_t pos = 0; i < end; ++i, ++pos) BUCKET_STEP(i, pos);
    for (int64_t pos = 0; pos < k; ++pos) above[pos] = count[pos];
}

/* pass 2: per position, the keys surely kept (high half above the threshold's); the keys
 * that share the threshold's high half are collected in flat order for the exact choice */
static void bucket_pass(void *p, int64_t begin, int64_t end, int worker) {
    spatial_args_t *a = (spatial_args_t *)p;
    if (a->positions == 9)
        bucket_range(a, begin, end, worker, 9);
    else
        bucket_range(a, begin, end, worker, a->positions); /* <= 64, see spre_spatial_mask */
}

/* S per position: unstructured pruning removes less than (m - n) / m of it, in integers. */
static inline uint8_t spatial_rule(int64_t kept, int64_t rows, int n, int m) {
    return (rows - kept) * m < (int64_t)(m - n) * rows;
}

/* S without a hint: an exact radix selection in two passes. Pass 1 finds the high 16 bits of
 * the threshold (a histogram), pass 2 counts per position the keys above that bucket and
 * collects the bucket's few keys (low 16 bits and position, in flat order), among which the
 * rest of the selection runs. Writes the threshold key. Returns 0, or -2 on allocation
 * failure. */
static int spatial_two_pass(const float *w, int64_t numel, int64_t positions, int64_t keep,
                            int n, int m, uint8_t *spatial, int threads, uint32_t *threshold) {
    const int64_t rows = numel / positions;
    spatial_args_t a;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.positions = positions;
    int64_t *kept = (int64_t *)calloc((size_t)positions, sizeof(int64_t));
    int64_t *low_counts = (int64_t *)calloc(LOW_BINS, sizeof(int64_t));
    a.high_counts = (uint32_t *)calloc((size_t)threads * HIGH_BINS, sizeof(uint32_t));
    a.above = (int64_t *)calloc((size_t)threads * positions, sizeof(int64_t));
    a.offset = (int64_t *)calloc((size_t)threads, sizeof(int64_t));
    int status = -2;
    if (!kept || !low_counts || !a.high_counts || !a.above || !a.offset) goto done;

    /* pass 1, then the high half of the keep-th largest key */
    parallel_for(high_pass, &a, numel, threads);
    int64_t from_top = 0, high = HIGH_BINS - 1, in_bucket = 0;
    for (; high >= 0; --high) {
        in_bucket = 0;
        for (int t = 0; t < threads; ++t) in_bucket += a.high_counts[(int64_t)t * HIGH_BINS + high];
        if (from_top + in_bucket >= keep) break;
        from_top += in_bucket;
    }
    a.high = (uint32_t)high;
    for (int t = 1; t < threads; ++t) /* parallel_for's ranges are those of pass 1 */
        a.offset[t] = a.offset[t - 1] + a.high_counts[(int64_t)(t - 1) * HIGH_BINS + high];
    a.low = (uint16_t *)malloc(sizeof(uint16_t) * (size_t)in_bucket);
    a.where = (int32_t *)malloc(sizeof(int32_t) * (size_t)in_bucket);
    if (!a.low || !a.where) goto done;

    /* pass 2 */
    parallel_for(bucket_pass, &a, numel, threads);
    for (int t = 0; t < threads; ++t)
        for (int64_t p = 0; p < positions; ++p) kept[p] += a.above[t * positions + p];

    /* the threshold's low half among the bucket's keys; ties to the lowest flat index */
    for (int64_t i = 0; i < in_bucket; ++i) ++low_counts[a.low[i]];
    int64_t low = LOW_BINS - 1;
    for (; low >= 0; --low) {
        if (from_top + low_counts[low] >= keep) break;
        from_top += low_counts[low];
    }
    *threshold = ((uint32_t)high << 16) | (uint32_t)low;
    int64_t ties_left = keep - from_top; /* 1 .. low_counts[low] */
    for (int64_t i = 0; i < in_bucket; ++i) {
        if (a.low[i] > low) {
            ++kept[a.where[i]];
        } else if (a.low[i] == low && ties_left > 0) {
            ++kept[a.where[i]];
            --ties_left;
        }
    }
    for (int64_t p = 0; p < positions; ++p) spatial[p] = spatial_rule(kept[p], rows, n, m);
    status = 0;
done:
    free(kept);
    free(low_counts);
    free(a.high_counts);
    free(a.above);
    free(a.offset);
    free(a.low);
    free(a.where);
    return status;
}

/* ---------------------------------------------------------------- S from a hint, one pass */

/* Between two refreshes an optimizer step moves the threshold (the keep-th largest key) very
 * little. Given the last one, a single pass counts per position the keys above a narrow window
 * around it and collects the few keys inside the window (key and flat index, in flat order);
 * if the threshold still lies in the window, the selection finishes among those. Otherwise the
 * two-pass selection runs. Keys are raw |w| bits here: the window lies below infinity, so
 * every NaN and infinity is simply above it. */

typedef struct {
    const float *w;
    int64_t numel, positions, block; /* block: lcm(positions, 4) values, whole vectors */
    int32_t lo, hi;                  /* the window [lo, hi] of keys */
    int64_t capacity;                /* candidates each worker may collect */
    int64_t *above;                  /* [threads][positions] */
    uint32_t *keys, *index;          /* [threads][capacity] the candidates, flat order */
    int64_t *found;                  /* [threads] candidates collected, -1: too many */
} window_args_t;

/* The in-window keys of block b (a vector at a time; each lane stored, the count advanced
 * by the in-window ones: no branch per value). Returns -1 when the buffer is full. */
static inline int collect_block(const window_args_t *a, int64_t b, int64_t *found,
                                uint32_t *keys, uint32_t *index) {
    const v4i lo = {a->lo, a->lo, a->lo, a->lo}, hi = {a->hi, a->hi, a->hi, a->hi};
    const v4i abs_bits = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const float *p = a->w + b * a->block;
    for (int64_t j = 0; j < a->block / 4; ++j) {
        v4i x;
        memcpy(&x, p + 4 * j, sizeof x);
        x &= abs_bits;
        const v4i inside = (x >= lo) & (x <= hi);
        if (!(inside[0] | inside[1] | inside[2] | inside[3])) continue;
        if (*found + 4 > a->capacity) return -1;
        for (int l = 0; l < 4; ++l) {
            keys[*found] = (uint32_t)x[l];
            index[*found] = (uint32_t)(b * a->block + 4 * j + l);
            *found += inside[l] & 1;
        }
    }
    return 0;
}

/* The last, partial block [from, numel), value by value. */
static inline int collect_tail(const window_args_t *a, int64_t from, int64_t *found,
                               uint32_t *keys, uint32_t *index, int64_t *above) {
    for (int64_t i = from; i < a->numel; ++i) {
        const int32_t key = (int32_t)bits_of(a->w + i);
        above[i % a->positions] += key > a->hi;
        if (key >= a->lo && key <= a->hi) {
            if (*found == a->capacity) return -1;
            keys[*found] = (uint32_t)key;
            index[(*found)++] = (uint32_t)i;
        }
    }
    return 0;
}

/* One vector of a block: count the lanes above the window, note any inside it. */
#define WINDOW_VECTOR(p, count, any)                                                        \
    do {                                                                                    \
        v4i x_;                                                                             \
        memcpy(&x_, (p), sizeof x_);                                                        \
        x_ &= abs_bits;                                                                     \
        (count) -= x_ > hi; /* true is -1 */                                                \
        (any) |= (x_ >= lo) & (x_ <= hi);                                                   \
    } while (0)

/* One worker over blocks [b0, b1): lane l of vector j counts block value 4j + l, at position
 * (4j + l) % positions; a block with in-window keys is collected again from L1. 3x3 kernels
 * (blocks of 36 = 9 vectors) keep their 9 counters in registers. */
static void window_pass(void *p, int64_t b0, int64_t b1, int worker) {
    window_args_t *a = (window_args_t *)p;
    const int64_t vectors = a->block / 4, full = a->numel / a->block;
    const v4i lo = {a->lo, a->lo, a->lo, a->lo}, hi = {a->hi, a->hi, a->hi, a->hi};
    const v4i abs_bits = {0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff};
    const v4i zero = {0, 0, 0, 0};
    v4i count[64];
    int64_t tail[64] = {0};
    uint32_t *keys = a->keys + worker * a->capacity, *index = a->index + worker * a->capacity;
    int64_t found = 0;
    for (int64_t j = 0; j < vectors; ++j) count[j] = zero;
    const int64_t end = b1 < full ? b1 : full;
    if (a->block == 36) {
        v4i c0 = zero, c1 = zero, c2 = zero, c3 = zero, c4 = zero, c5 = zero, c6 = zero,
            c7 = zero, c8 = zero;
        for (int64_t b = b0; b < end; ++b) {
            const float *w = a->w + b * 36;
            v4i any = zero;
            WINDOW_VECTOR(w, c0, any);
            WINDOW_VECTOR(w + 4, c1, any);
            WINDOW_VECTOR(w + 8, c2, any);
            WINDOW_VECTOR(w + 12, c3, any);
            WINDOW_VECTOR(w + 16, c4, any);
            WINDOW_VECTOR(w + 20, c5, any);
            WINDOW_VECTOR(w + 24, c6, any);
            WINDOW_VECTOR(w + 28, c7, any);
            WINDOW_VECTOR(w + 32, c8, any);
            if ((any[0] | any[1] | any[2] | any[3]) &&
                collect_block(a, b, &found, keys, index)) {
                a->found[worker] = -1;
                return;
            }
        }
        count[0] = c0, count[1] = c1, count[2] = c2, count[3] = c3, count[4] = c4;
        count[5] = c5, count[6] = c6, count[7] = c7, count[8] = c8;
    } else {
        for (int64_t b = b0; b < end; ++b) {
            const float *w = a->w + b * a->block;
            v4i any = zero;
            for (int64_t j = 0; j < vectors; ++j) WINDOW_VECTOR(w + 4 * j, count[j], any);
            if ((any[0] | any[1] | any[2] | any[3]) &&
                collect_block(a, b, &found, keys, index)) {
                a->found[worker] = -1;
                return;
            }
        }
    }
    if (b1 > full && collect_tail(a, full * a->block, &found, keys, index, tail)) {
        a->found[worker] = -1;
        return;
    }
    int64_t *above = a->above + worker * a->positions;
    for (int64_t p = 0; p < a->positions; ++p) above[p] = tail[p];
    for (int64_t j = 0; j < vectors; ++j)
        for (int l = 0; l < 4; ++l) above[(4 * j + l) % a->positions] += count[j][l];
    a->found[worker] = found;
}

static void swap_u32(uint32_t *x, uint32_t *y) {
    const uint32_t t = *x;
    *x = *y;
    *y = t;
}

/* The rank-th largest (1-based) of v[0..count) (reordered): quickselect with a three-way
 * partition, so runs of equal keys cost no more than distinct ones. */
static uint32_t select_largest(uint32_t *v, int64_t count, int64_t rank) {
    int64_t lo = 0, hi = count; /* the answer is in v[lo..hi) at rank `rank` from the top */
    for (;;) {
        if (hi - lo == 1) return v[lo];
        const uint32_t a = v[lo], b = v[lo + (hi - lo) / 2], c = v[hi - 1]; /* median of 3 */
        const uint32_t pivot = a < b ? (b < c ? b : (a < c ? c : a))
                                     : (a < c ? a : (b < c ? c : b));
        /* [lo, gt): > pivot, [gt, i): == pivot, [lt, hi): < pivot */
        int64_t gt = lo, i = lo, lt = hi;
        while (i < lt) {
            if (v[i] > pivot)
                swap_u32(&v[gt++], &v[i++]);
            else if (v[i] < pivot)
                swap_u32(&v[i], &v[--lt]);
            else
                ++i;
        }
        if (rank <= gt - lo) {
            hi = gt;
        } else if (rank <= lt - lo) {
            return pivot;
        } else {
            rank -= lt - lo;
            lo = lt;
        }
    }
}

/* One pass from the hint *threshold, as described above. Returns 1 if the threshold lay in
 * the window (S and *threshold written), 0 if not (nothing written), -2 on allocation
 * failure. */
static int spatial_one_pass(const float *w, int64_t numel, int64_t positions, int64_t keep,
                            int n, int m, uint8_t *spatial, int threads, uint32_t *threshold,
                            double window) {
    float last;
    memcpy(&last, threshold, sizeof last);
    const float low_value = (float)(last * (1.0 - window)),
                high_value = (float)(last * (1.0 + window));
    uint32_t lo, hi;
    memcpy(&lo, &low_value, sizeof lo);
    memcpy(&hi, &high_value, sizeof hi);
    if (!(window > 0.0 && window < 1.0) || hi >= INF_BITS) return 0;
    window_args_t a;
    memset(&a, 0, sizeof a);
    a.w = w;
    a.numel = numel;
    a.positions = positions;
    a.block = positions % 4 == 0 ? positions : positions % 2 == 0 ? 2 * positions : 4 * positions;
    a.lo = (int32_t)lo;
    a.hi = (int32_t)hi;
    const int64_t blocks = (numel + a.block - 1) / a.block;
    if (threads > blocks) threads = (int)blocks;
    /* the window holds ~2 * window * density of the keys; a few times that, then give up */
    a.capacity = (int64_t)(8.0 * window * (double)numel / threads) + 256;
    a.above = (int64_t *)calloc((size_t)threads * positions, sizeof(int64_t));
    a.keys = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(threads * a.capacity));
    a.index = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)(threads * a.capacity));
    a.found = (int64_t *)calloc((size_t)threads, sizeof(int64_t));
    int64_t *kept = (int64_t *)calloc((size_t)positions, sizeof(int64_t));
    uint32_t *scratch = NULL;
    int status = -2;
    if (!a.above || !a.keys || !a.index || !a.found || !kept) goto done;
    parallel_for(window_pass, &a, blocks, threads);

    status = 0;
    int64_t candidates = 0, above = 0;
    for (int t = 0; t < threads; ++t) {
        if (a.found[t] < 0) goto done; /* the window held too many keys */
        candidates += a.found[t];
        for (int64_t p = 0; p < positions; ++p) kept[p] += a.above[t * positions + p];
    }
    for (int64_t p = 0; p < positions; ++p) above += kept[p];
    const int64_t need = keep - above; /* kept keys still to choose in the window */
    if (need < 1 || need > candidates) goto done; /* the threshold left the window */
    scratch = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)candidates);
    if (!scratch) {
        status = -2;
        goto done;
    }
    for (int t = 0, c = 0; t < threads; ++t)
        for (int64_t i = 0; i < a.found[t]; ++i) scratch[c++] = a.keys[t * a.capacity + i];
    const uint32_t at = select_largest(scratch, candidates, need);
    int64_t ties_left = need;
    for (int t = 0; t < threads; ++t)
        for (int64_t i = 0; i < a.found[t]; ++i) ties_left -= a.keys[t * a.capacity + i] > at;
    /* worker by worker is flat order: the ties kept are those at the lowest indices */
    for (int t = 0; t < threads; ++t) {
        for (int64_t i = 0; i < a.found[t]; ++i) {
            const uint32_t key = a.keys[t * a.capacity + i];
            if (key > at || (key == at && ties_left-- > 0))
                ++kept[a.index[t * a.capacity + i] % positions];
        }
    }
    const int64_t rows = numel / positions;
    for (int64_t p = 0; p < positions; ++p) spatial[p] = spatial_rule(kept[p], rows, n, m);
    *threshold = at;
    status = 1;
done:
    free(a.above);
    free(a.keys);
    free(a.index);
    free(a.found);
    free(kept);
    free(scratch);
    return status;
}

/* SpRe's layer-wide S of a contiguous float32 weight of `numel` values whose innermost
 * `positions` values are the kernel positions: S[p] = 1 where the unstructured magnitude mask
 * that keeps the `keep` largest |w| of the whole tensor (ties at the threshold to the lowest
 * flat indices) prunes less than (m - n) / m of position p.
 *
 * *threshold: in, the threshold key of the last refresh (UINT32_MAX: none); out, this one's.
 * With a finite one, one pass within +-window of it (relative) usually decides; else, or if
 * the threshold moved out of the window, the two-pass selection runs. Returns 1 (decided in
 * one pass), 0 (two passes), or < 0 on a bad argument or allocation failure. */
int spre_spatial_mask(const float *w, int64_t numel, int64_t positions, int64_t keep, int n,
                      int m, uint8_t *spatial, int threads, uint32_t *threshold,
                      double window) {
    if (positions < 1 || positions > 64 || numel < 1 || numel % positions || keep < 0 ||
        keep > numel || n < 1 || n >= m)
        return -1;
    if (numel >= (int64_t)UINT32_MAX) return -1; /* counts and indices are 32-bit */
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > numel) threads = (int)numel;
    if (keep == 0) {
        const int64_t rows = numel / positions;
        for (int64_t p = 0; p < positions; ++p) spatial[p] = spatial_rule(0, rows, n, m);
        *threshold = UINT32_MAX;
        return 0;
    }
    if (*threshold < INF_BITS) {
        const int status = spatial_one_pass(w, numel, positions, keep, n, m, spatial, threads,
                                            threshold, window);
        if (status) return status;
    }
    return spatial_two_pass(w, numel, positions, keep, n, m, spatial, threads, threshold);
}


/* ---------------------------------------------------------------- SpRe's fold of two branches */

/* While both BNs use running statistics, SpRe's two branches run as one conv with the weight
 *     K = L * a + (R * (B * S)) * b        (per output channel o: a[o], b[o])
 * where L is the main branch's weight, R the branch weight, B the mask and S the spatial mask
 * (0/1 per kernel position). L is either the learner's masked weight as given, or, for an
 * SR-STE learner, W * B from the dense latent weight W: then the backward also applies SR-STE,
 *     dW = dL + (decay * W) * (1 - B),
 * so that its masking costs no pass of its own either way. Computed as written, in float32, so
 * K and the gradients of W and R equal the same tensor expressions bit for bit; the per-channel
 * sums da, db are accumulated as fold_rows says. */

typedef float v4f __attribute__((vector_size(16)));

typedef struct {
    const float *dk, *l, *r, *a, *b;
    const float *sv; /* S repeated: sv[j] = S[j % positions], j < 4 * positions */
    const uint8_t *mask;
    float *k, *dl, *dr, *da, *db;
    int64_t per_out, positions;
    float decay;
    int masked; /* L = W * B (SR-STE) instead of L as given */
} fold_args_t;

static inline v4f load4(const float *p) {
    v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, v4f v) { memcpy(p, &v, sizeof v); }

/* four mask bytes (0/1) as floats */
static inline v4f keep4(const uint8_t *mask) {
#ifdef HAVE_SSE2
    int32_t word;
    memcpy(&word, mask, sizeof word);
    const __m128i zero = _mm_setzero_si128();
    const __m128i bytes = _mm_cvtsi32_si128(word);
    return (v4f)_mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(bytes, zero), zero));
#else
    return (v4f){(float)mask[0], (float)mask[1], (float)mask[2], (float)mask[3]};
#endif
}

/* Output channels [begin, end): 4 weights at a time, the last n % 4 one by one, with the same
 * float operations per weight either way (the results do not depend on the lane). `forward`,
 * `masked` and `refine` are constants at the call sites: each inlined copy has its own loop,
 * with no test per weight. The sums da, db are added in float over 64 weights, then in
 * double. */
static inline void fold_rows(const fold_args_t *f, int64_t begin, int64_t end,
                             const int forward, const int masked, const int refine) {
    const int64_t n = f->per_out, period = 4 * f->positions;
    const float decay = f->decay, one = 1.0f;
    const v4f zero = {0, 0, 0, 0};
    for (int64_t o = begin; o < end; ++o) {
        const float a = f->a[o], b = f->b[o];
        const float *l = f->l + o * n, *r = f->r + o * n;
        const uint8_t *mask = f->mask + o * n;
        double da = 0.0, db = 0.0;
        int64_t i = 0, j = 0; /* j: i's place in the period of sv */
        while (i + 4 <= n) {
            v4f part_a = zero, part_b = zero;
            for (int terms = 0; terms < 16 && i + 4 <= n; ++terms) {
                const v4f keep = keep4(mask + i), bs = keep * load4(f->sv + j);
                const v4f branch = load4(r + i) * bs;
                const v4f main = masked ? load4(l + i) * keep : load4(l + i);
                if (forward) {
                    store4(f->k + o * n + i, main * a + branch * b);
                } else {
                    const v4f g = load4(f->dk + o * n + i);
                    store4(f->dl + o * n + i,
                           refine ? g * a + (decay * load4(l + i)) * (one - keep) : g * a);
                    store4(f->dr + o * n + i, (g * b) * bs);
                    part_a += g * main;
                    part_b += g * branch;
                }
                i += 4;
                j = j + 4 == period ? 0 : j + 4;
            }
            if (!forward) {
                da += (double)part_a[0] + (double)part_a[1] + (double)part_a[2] +
                      (double)part_a[3];
                db += (double)part_b[0] + (double)part_b[1] + (double)part_b[2] +
                      (double)part_b[3];
            }
        }
        for (; i < n; ++i, ++j) { /* j stays below the period: it was at most period - 4 */
            const float keep = (float)mask[i], bs = keep * f->sv[j], branch = r[i] * bs;
            const float main = masked ? l[i] * keep : l[i];
            if (forward) {
                f->k[o * n + i] = main * a + branch * b;
            } else {
                const float g = f->dk[o * n + i];
                f->dl[o * n + i] = refine ? g * a + (decay * l[i]) * (one - keep) : g * a;
                f->dr[o * n + i] = (g * b) * bs;
                da += (double)(g * main);
                db += (double)(g * branch);
            }
        }
        if (!forward) {
            f->da[o] = (float)da;
            f->db[o] = (float)db;
        }
    }
}

static void fold_forward_range(void *p, int64_t begin, int64_t end, int worker) {
    (void)worker;
    const fold_args_t *f = (const fold_args_t *)p;
    if (f->masked) fold_rows(f, begin, end, 1, 1, 0);
    else fold_rows(f, begin, end, 1, 0, 0);
}

/* refine: add SR-STE's term (masked, decay != 0; with decay == 0 SR-STE passes dL as is) */
static void fold_backward_range(void *p, int64_t begin, int64_t end, int worker) {
    (void)worker;
    const fold_args_t *f = (const fold_args_t *)p;
    if (!f->masked) fold_rows(f, begin, end, 0, 0, 0);
    else if (f->decay != 0.0f) fold_rows(f, begin, end, 0, 1, 1);
    else fold_rows(f, begin, end, 0, 1, 0);
}

/* The forward (dk == NULL: writes k) or the backward (writes dl, dr, da, db) of the fold, for
 * `out` output channels of `per_out` values whose innermost `positions` values are the
 * kernel positions; `masked`: l is SR-STE's latent weight W (masked here, `decay` in the
 * backward). Returns 0, -1 on a bad argument, -2 if out of memory. */
int spre_fold(const float *dk, const float *l, const float *r, const uint8_t *mask,
              const float *s, const float *a, const float *b, float *k, float *dl, float *dr,
              float *da, float *db, int64_t out, int64_t per_out, int64_t positions,
              int masked, float decay, int threads) {
    if (out < 1 || per_out < 1 || positions < 1 || per_out % positions) return -1;
    float *sv = malloc(4 * positions * sizeof *sv);
    if (!sv) return -2;
    for (int64_t j = 0; j < 4 * positions; ++j) sv[j] = s[j % positions];
    fold_args_t f = {dk, l, r, a, b, sv, mask, k, dl, dr, da, db, per_out, positions, decay,
                     masked != 0};
    parallel_for(dk ? fold_backward_range : fold_forward_range, &f, out, threads);
    free(sv);
    return 0;
}


/* ---------------------------------------------------------------- LBC's removal step */

/* One step of LBC's schedule, from `survivors` alive subsets per group to one fewer: a group
 * whose lowest alive score is unique loses that subset (the ranking's later keys, magnitude
 * and index, cannot change which one), its score becomes 0 and its mask bytes the union of
 * the members of the subsets left. A group whose lowest alive score is tied, NaN or +inf (then
 * equal to the dead subsets' key), or that does not have `survivors` alive subsets, is left
 * as it is and listed for the full ranking, which the caller does.
 *
 * Four groups at a time, one per vector lane (subset k of four groups is one vector): one
 * group at a time, the data-dependent position of the lowest score costs a mispredicted branch
 * or a serial chain per group, three times slower (measured). All layers of a call (one N:M
 * pattern) are one range of work for the threads: a thread start per layer cost 15-25% of the
 * time on R-50 (measured). */

#define LBC_MAX_SUBSETS 256
#define LBC_MAX_M 32

typedef struct {
    float *scores;
    uint8_t *alive, *mask;
    int64_t groups, channel_blocks, positions, survivors;
    int64_t first_block; /* of the call's blocks of four groups */
    int64_t *ties;       /* the undecided groups, in no particular order */
    int64_t tie_count;   /* updated atomically: threads may share a layer */
} lbc_layer_t;

typedef struct {
    lbc_layer_t *layers;
    int num;
    int64_t subsets, m;
    const uint32_t *members; /* bit j set: member j of a group is in subset k */
} lbc_args_t;

/* Subset k of four consecutive groups as one vector: their scores, and a lane mask (all bits
 * set) where the subset is dead. With six subsets (2:4) the 4 x 6 scores are transposed with six
 * loads and twelve shuffles, and each group's six alive bytes (0/1) become bits with one
 * multiply (reading two bytes past them: the caller pads the last block); otherwise the lanes
 * are gathered one by one. */
static inline __attribute__((always_inline)) void lbc_load(const float *s, const uint8_t *al,
                                                           const int64_t subsets, v4f *score,
                                                           v4i *dead) {
#if defined(HAVE_SHUFFLES) && defined(__BYTE_ORDER__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (subsets == 6) {
        const v4f a = load4(s), b = load4(s + 4), c = load4(s + 8), d = load4(s + 12),
                  e = load4(s + 16), f = load4(s + 20);
        const v4f ab = __builtin_shufflevector(a, b, 0, 6, 1, 7),
                  de = __builtin_shufflevector(d, e, 0, 6, 1, 7),
                  ac = __builtin_shufflevector(a, c, 2, 4, 3, 5),
                  df = __builtin_shufflevector(d, f, 2, 4, 3, 5),
                  bc = __builtin_shufflevector(b, c, 0, 6, 1, 7),
                  ef = __builtin_shufflevector(e, f, 0, 6, 1, 7);
        score[0] = __builtin_shufflevector(ab, de, 0, 1, 4, 5);
        score[1] = __builtin_shufflevector(ab, de, 2, 3, 6, 7);
        score[2] = __builtin_shufflevector(ac, df, 0, 1, 4, 5);
        score[3] = __builtin_shufflevector(ac, df, 2, 3, 6, 7);
        score[4] = __builtin_shufflevector(bc, ef, 0, 1, 4, 5);
        score[5] = __builtin_shufflevector(bc, ef, 2, 3, 6, 7);
        /* byte j of a little-endian word lands at bit 56 + j of the product (no carries) */
        const uint64_t gather = 0x0102040810204080ull;
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, al, 8);
        memcpy(&w1, al + 6, 8);
        memcpy(&w2, al + 12, 8);
        memcpy(&w3, al + 18, 8);
        const v4i bits = {(int32_t)((w0 * gather) >> 56), (int32_t)((w1 * gather) >> 56),
                          (int32_t)((w2 * gather) >> 56), (int32_t)((w3 * gather) >> 56)};
#pragma GCC unroll 6
        for (int k = 0; k < 6; ++k) dead[k] = (bits & splat(1 << k)) == splat(0);
        return;
    }
#endif
#pragma GCC unroll 8
    for (int64_t k = 0; k < subsets; ++k) {
        score[k] = (v4f){s[k], s[subsets + k], s[2 * subsets + k], s[3 * subsets + k]};
        dead[k] = (v4i){al[k], al[subsets + k], al[2 * subsets + k], al[3 * subsets + k]} ==
                  splat(0);
    }
}

/* the lower of x and y per lane; y where x is NaN */
static inline v4f lbc_min(v4f x, v4f y) {
#ifdef HAVE_SSE2
    return (v4f)_mm_min_ps((__m128)x, (__m128)y);
#else
    const v4i less = x < y;
    return (v4f)(((v4i)x & less) | ((v4i)y & ~less));
#endif
}

/* Groups [4 * begin, 4 * end) of `layer` (clipped to its last group). `subsets` and `m` are
 * constants at the 2:4 call site, so that its loops unroll. */
static inline __attribute__((always_inline)) void lbc_blocks(const lbc_args_t *a,
                                                             lbc_layer_t *layer, int64_t begin,
                                                             int64_t end, const int64_t subsets,
                                                             const int64_t m) {
    const int64_t positions = layer->positions, blocks = layer->channel_blocks;
    const int64_t block_stride = m * positions, row_stride = m * blocks * positions;
    const int64_t groups = layer->groups;
    const int64_t first = 4 * begin, last = 4 * end < groups ? 4 * end : groups;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    const int wide_masks = m == 4 && positions == 1;
#else
    const int wide_masks = 0; /* the byte spreading below assumes little-endian lanes */
#endif
    const v4i survivors = splat((int32_t)layer->survivors);
    const v4i dead_subsets = splat((int32_t)(subsets - layer->survivors));
    const v4f inf = {INFINITY, INFINITY, INFINITY, INFINITY};
    float *const all_scores = layer->scores;
    uint8_t *const all_alive = layer->alive;
    v4f key[LBC_MAX_SUBSETS];
    v4i dead[LBC_MAX_SUBSETS], members[LBC_MAX_SUBSETS];
    float pad_scores[4 * LBC_MAX_SUBSETS];
    uint8_t pad_alive[4 * LBC_MAX_SUBSETS];
    for (int64_t k = 0; k < subsets; ++k) members[k] = splat((int32_t)a->members[k]);
    /* group g holds input channels [cb * m, cb * m + m) at kernel position pos of output
     * channel o (the layout of to_groups): its mask bytes start at row + cb * m * positions,
     * row = mask + o * m * blocks * positions + pos, followed along rather than divided out */
    int64_t cb = first % blocks, pos = first / blocks % positions;
    uint8_t *row = layer->mask + first / (blocks * positions) * row_stride + pos;
    uint8_t *group_mask = row + cb * block_stride;
    for (int64_t g = first; g < last; g += 4) {
        const int lanes = last - g < 4 ? (int)(last - g) : 4;
        const float *s = all_scores + g * subsets;
        const uint8_t *al = all_alive + g * subsets;
        if (g + 4 >= groups) { /* the last groups: from a copy padded with dead subsets */
            memset(pad_scores, 0, sizeof pad_scores);
            memset(pad_alive, 0, sizeof pad_alive);
            memcpy(pad_scores, s, (size_t)(lanes * subsets) * sizeof(float));
            memcpy(pad_alive, al, (size_t)(lanes * subsets));
            s = pad_scores;
            al = pad_alive;
        }
        lbc_load(s, al, subsets, key, dead);
        /* A dead subset's key is NaN (all bits set): no minimum, equal to nothing, not
         * counted as valid. So a group is decided iff it has `survivors` valid keys (alive,
         * not NaN) and `subsets - survivors` dead ones, and its lowest key is unique. */
        v4f lowest = inf;
        v4i valid = splat(0), dead_count = splat(0);
#pragma GCC unroll 8
        for (int64_t k = 0; k < subsets; ++k) {
            key[k] = (v4f)((v4i)key[k] | dead[k]);
            lowest = lbc_min(key[k], lowest);
            valid -= key[k] == key[k];
            dead_count -= dead[k];
        }
        v4i hits = splat(0), worst = splat(0), others = splat(0);
#pragma GCC unroll 8
        for (int64_t k = 0; k < subsets; ++k) {
            const v4i hit = key[k] == lowest;
            hits -= hit;
            worst |= hit & splat((int32_t)k);
            others |= members[k] & ~(dead[k] | hit);
        }
        /* +inf lowest: it ties with the dead subsets in the full ranking's terms */
        const v4i undecided = (hits != splat(1)) | (valid != survivors) |
                              (dead_count != dead_subsets) | (lowest == inf);
        /* The mask bytes of the settled groups: the union of the subsets left. A 1x1 conv at
         * M = 4 has the 16 bytes of four consecutive groups in a row: one vector store (the
         * undecided lanes keep theirs); otherwise byte by byte. */
        const int row_of_16 = wide_masks && lanes == 4;
        if (row_of_16) {
            uint8_t *bytes = layer->mask + g * 4;
            v4i old;
            memcpy(&old, bytes, sizeof old);
            /* bit j of a lane's union -> byte j of the lane (no carries: distinct bits) */
            const v4i spread = (others * splat(0x00204081)) & splat(0x01010101);
            const v4i merged = (spread & ~undecided) | (old & undecided);
            memcpy(bytes, &merged, sizeof merged);
        }
        for (int lane = 0; lane < lanes; ++lane) {
            const int64_t group = g + lane;
            if (undecided[lane]) {
                layer->ties[__atomic_fetch_add(&layer->tie_count, 1, __ATOMIC_RELAXED)] = group;
            } else {
                all_alive[group * subsets + worst[lane]] = 0;
                all_scores[group * subsets + worst[lane]] = 0.0f;
                if (!row_of_16) {
                    const uint32_t union_bits = (uint32_t)others[lane];
#pragma GCC unroll 4
                    for (int64_t j = 0; j < m; ++j)
                        group_mask[j * positions] = (uint8_t)((union_bits >> j) & 1u);
                }
            }
            group_mask += block_stride;
            if (++cb == blocks) {
                cb = 0;
                if (++pos == positions) {
                    pos = 0;
                    row += row_stride - (positions - 1);
                } else {
                    row += 1;
                }
                group_mask = row;
            }
        }
    }
}

/* The blocks [begin, end) of all layers of the call, layer by layer. */
static void lbc_range(void *p, int64_t begin, int64_t end, int worker) {
    const lbc_args_t *a = (const lbc_args_t *)p;
    (void)worker;
    for (int i = 0; i < a->num; ++i) {
        lbc_layer_t *layer = &a->layers[i];
        const int64_t first = layer->first_block, count = (layer->groups + 3) / 4;
        const int64_t from = begin > first ? begin - first : 0;
        const int64_t to = end < first + count ? end - first : count;
        if (from >= to) continue;
        if (a->subsets == 6 && a->m == 4)
            lbc_blocks(a, layer, from, to, 6, 4); /* 2:4: its own copy, with unrolled loops */
        else
            lbc_blocks(a, layer, from, to, a->subsets, a->m);
    }
}

/* The removal step over `num` layers of one N:M pattern (`subsets` subsets of `m` members,
 * `members[k]` the bits of subset k). Layer i has groups[i] groups of scores[i] (float32) and
 * alive[i] (bool) and the mask masks[i] of a weight with channel_blocks[i] * m input channels
 * and positions[i] kernel positions (the groups are the rows of to_groups); survivors[i] alive
 * subsets per group before the step. Its undecided groups go to ties[i] (room for groups[i]),
 * tie_counts[i] of them, in no particular order. Returns 0, or -1 on a bad argument. */
int spre_lbc_remove(int num, void *const *scores, void *const *alive, void *const *masks,
                    const int64_t *groups, const int64_t *channel_blocks,
                    const int64_t *positions, const int64_t *survivors, void *const *ties,
                    int64_t *tie_counts, int64_t subsets, int64_t m, const uint32_t *members,
                    int threads) {
    if (num < 1 || subsets < 1 || subsets > LBC_MAX_SUBSETS || m < 1 || m > LBC_MAX_M)
        return -1;
    lbc_layer_t *layers = (lbc_layer_t *)calloc((size_t)num, sizeof *layers);
    if (!layers) return -2;
    int64_t blocks = 0;
    for (int i = 0; i < num; ++i) {
        if (groups[i] < 1 || channel_blocks[i] < 1 || positions[i] < 1 ||
            groups[i] % (channel_blocks[i] * positions[i])) {
            free(layers);
            return -1;
        }
        layers[i] = (lbc_layer_t){(float *)scores[i], (uint8_t *)alive[i], (uint8_t *)masks[i],
                                  groups[i], channel_blocks[i], positions[i], survivors[i],
                                  blocks, (int64_t *)ties[i], 0};
        blocks += (groups[i] + 3) / 4;
    }
    lbc_args_t a = {layers, num, subsets, m, members};
    parallel_for(lbc_range, &a, blocks, threads);
    for (int i = 0; i < num; ++i) tie_counts[i] = layers[i].tie_count;
    free(layers);
    return 0;
}
