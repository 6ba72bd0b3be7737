/*
 * cnd-fab native kernel: the lowest golden nonce in a range, SHA-256(SHA-256(block || nonce)).
 *
 * One static binary per architecture, run by the worker's core processes. Three ways to run it:
 *
 *   sha256d --serve [--path P]   read jobs on stdin, one per line, six fields split by single spaces:
 *                                  <job id> <block hex, - when empty, = for the block of the last
 *                                  job that passed its checks> <nonce bytes> <difficulty> <start> <end>
 *                                answer each line with exactly one line that echoes the job id:
 *                                  <job id> <found 0|1> <nonce> <checked> <hash hex or ->
 *                                  error <job id, or - if unreadable> <reason>
 *                                after "p <job id> <checked>" lines every 2^20 nonces on the way
 *   sha256d --paths              print the paths this CPU can run, best first
 *   sha256d --path P --once ...  one job from argv (the five fields after the id), for tests;
 *                                prints "<found> <nonce> <checked> <hash>" or "error <reason>"
 *
 * Every field is checked in full: numbers are plain decimal digits that fit (no sign, no
 * exponent, no trailing junk, no silent clamping), 4 or 8 nonce bytes, D in 1..256, start below
 * end, end inside the nonce space. A line of any length up to MAX_LINE is read whole, and a
 * longer one is consumed and refused, so each request gets one answer that the worker can match.
 *
 * Paths: "sha-ni" (x86-64 SHA extensions, two nonces interleaved), "armv8-sha2" (ARMv8
 * crypto extensions, two nonces interleaved) and "portable" (plain C). The best one the CPU
 * reports is chosen at run time unless --path forces one.
 *
 * Per nonce only the nonce-dependent part is hashed: the whole 64-byte chunks of the block
 * before the nonce are compressed once into a midstate. The second hash is rejected early on
 * its first word, before the full comparison with the target.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#include <sys/auxv.h>
#ifndef HWCAP_SHA2
#define HWCAP_SHA2 (1 << 6)
#endif
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

/* The longest --serve line read: blocks up to 2 MiB, four times what a WORK message may carry. */
#define MAX_LINE ((size_t)4 << 20)
/* In --serve mode, a line "p <job id> <checked>" every this many nonces, for live counts and cancel. */
#define PROGRESS_EVERY ((uint64_t)1 << 20)
static int report_progress = 0;
static unsigned long long progress_job_id = 0;
static uint64_t progress_start = 0, progress_due = PROGRESS_EVERY;

static void begin_progress(unsigned long long job_id, uint64_t start) {
    progress_job_id = job_id;
    progress_start = start;
    progress_due = PROGRESS_EVERY;
}

/* Called before the nonces from `nonce` on are hashed. A path that takes n at a time passes a
   multiple of 2^20 between two calls, so the line names the multiple: that many nonces from
   the start are checked and hold no golden one, which is all the worker reads into it. */
static inline void progress(uint64_t nonce) {
    if (nonce - progress_start >= progress_due) {
        if (report_progress) {
            printf("p %llu %llu\n", progress_job_id, (unsigned long long)progress_due);
            fflush(stdout);
        }
        progress_due += PROGRESS_EVERY;
    }
}

/* Everything about a job that does not change from one nonce to the next, worked out once. */
typedef struct {
    uint32_t midstate[8];  /* state after the block's whole chunks before the nonce */
    uint8_t tail[128];     /* the rest of the message, padded, nonce bytes to be filled in */
    uint32_t words[32];    /* the same as big-endian words, the nonce's bytes zero */
    int tail_chunks;       /* 1 or 2 chunks compressed per nonce */
    int nonce_offset;      /* where the nonce starts in tail: always in chunk 0 */
    int nonce_bytes;       /* 4 or 8 */
    int nonce_word;        /* the first word of `words` that holds nonce bytes */
    int nonce_words;       /* how many do: 1 to 3 */
    int nonce_shift;       /* bits after the nonce's last byte in its word */
    uint8_t place[8][16];  /* per quad of `words`, byte shuffles (PSHUFB, TBL) that put the nonce's
                              bytes, least significant first, where they go; 0x80 puts zero */
    unsigned nonce_quads;  /* bit q: quad q holds nonce bytes */
    int second_fixed;      /* chunk 1 holds no nonce byte: its whole schedule is fixed */
    uint32_t schedule[2][64]; /* each chunk's message schedule from `words`: exact where the nonce does not reach */
    int schedule_from;     /* chunk 0's first schedule word (16..63) that the nonce reaches */
    uint32_t early[8];     /* chunk 0's working state after its rounds before word `nonce_word` */
    int difficulty;        /* 1..256 */
    uint32_t first_word_limit; /* early reject: golden needs word 0 <= this */
} job_t;

typedef struct {
    int found;
    uint64_t nonce;
    uint64_t checked;
    uint32_t hash[8];
} result_t;

static inline uint32_t load_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* The words of `words` from job->nonce_word on that hold the nonce's bytes, with them filled in. */
static inline void nonce_words(const job_t *job, uint64_t nonce, uint32_t out[3]) {
    unsigned __int128 placed = (unsigned __int128)nonce << job->nonce_shift;
    for (int k = job->nonce_words - 1; k >= 0; k--) {
        out[k] = job->words[job->nonce_word + k] | (uint32_t)placed;
        placed >>= 32;
    }
}

/* Golden when the hash, read big-endian, has at least `difficulty` leading zero bits. */
static int is_golden(const uint32_t hash[8], int difficulty) {
    int full = difficulty / 32, rest = difficulty % 32;
    for (int i = 0; i < full; i++)
        if (hash[i] != 0) return 0;
    if (rest == 0) return 1;
    return (hash[full] >> (32 - rest)) == 0;
}

/* A lane's hash: when golden, the answer. Lanes are settled in nonce order, so the first
   golden one is the lowest. */
static int settle(const job_t *job, const uint32_t hash[8], uint64_t nonce, uint64_t start, result_t *out) {
    if (!is_golden(hash, job->difficulty)) return 0;
    out->found = 1;
    out->nonce = nonce;
    out->checked = nonce - start + 1;
    memcpy(out->hash, hash, 32);
    return 1;
}

static void search_portable(const job_t *job, uint64_t start, uint64_t end, result_t *out);

/* A path that takes n nonces at a time leaves the last few (fewer than n) to the portable
   code; the count covers them all. */
static void finish_tail(const job_t *job, uint64_t start, uint64_t nonce, uint64_t end, result_t *out) {
    if (nonce < end) {
        search_portable(job, nonce, end, out);
        out->checked += nonce - start;
        return;
    }
    out->checked = end - start;
}

/* ---------------------------------------------------------------- SHA-256 on any lane type */

/* Written once for a lane type T that is either uint32_t (one nonce) or a GCC/clang vector of
   them (one nonce per element): the operators, and a scalar operand, mean the same on both. */
#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))
#define BSIG0(x) (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x) (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x) (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x) (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))
#define CH(e, f, g) ((g) ^ ((e) & ((f) ^ (g))))
#define MAJ(a, b, c) (((a) & (b)) | ((c) & ((a) | (b))))

/* The second hash's message is the 32-byte first digest and then fixed padding: word 8 is
   the 1 bit, words 9..14 are zero and word 15 is the length, 256 bits. */
#define PAD8 0x80000000u
#define PAD15 256u

/* For a lane type T, with NAME as prefix:
   NAME_rounds(s, kw, first)  rounds first..63 on the working state s; kw[i] = K[i] + W[i]
   NAME_schedule(w, kw, from) message words from..63, and kw for them
   NAME_outer_schedule(w, kw) the second hash's words 16..63 from words 0..7 (its words 8..15
                              are the padding: every term they make is folded in as a constant) */
#define SHA256_LANES(NAME, T, ATTR)                                                          \
    ATTR static inline void NAME##_rounds(T s[8], const T kw[64], int first) {               \
        T a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7];  \
        for (int i = first; i < 64; i++) {                                                 \
            T t1 = h + BSIG1(e) + CH(e, f, g) + kw[i];                                     \
            T t2 = BSIG0(a) + MAJ(a, b, c);                                                \
            h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;             \
        }                                                                                  \
        s[0] = a; s[1] = b; s[2] = c; s[3] = d; s[4] = e; s[5] = f; s[6] = g; s[7] = h;    \
    }                                                                                      \
    ATTR static inline void NAME##_schedule(T w[64], T kw[64], int from) {                   \
        for (int i = from; i < 64; i++) {                                                  \
            w[i] = SSIG1(w[i - 2]) + w[i - 7] + SSIG0(w[i - 15]) + w[i - 16];              \
            kw[i] = w[i] + K[i];                                                           \
        }                                                                                  \
    }                                                                                      \
    ATTR static inline void NAME##_outer_schedule(T w[64], T kw[64]) {                       \
        w[16] = SSIG0(w[1]) + w[0];                                                        \
        w[17] = SSIG0(w[2]) + w[1] + SSIG1(PAD15);                                         \
        for (int i = 18; i < 22; i++) w[i] = SSIG1(w[i - 2]) + SSIG0(w[i - 15]) + w[i - 16]; \
        w[22] = SSIG1(w[20]) + PAD15 + SSIG0(w[7]) + w[6];                                 \
        w[23] = SSIG1(w[21]) + w[16] + SSIG0(PAD8) + w[7];                                 \
        w[24] = SSIG1(w[22]) + w[17] + PAD8;                                               \
        for (int i = 25; i < 30; i++) w[i] = SSIG1(w[i - 2]) + w[i - 7];                   \
        w[30] = SSIG1(w[28]) + w[23] + SSIG0(PAD15);                                       \
        w[31] = SSIG1(w[29]) + w[24] + SSIG0(w[16]) + PAD15;                               \
        for (int i = 16; i < 32; i++) kw[i] = w[i] + K[i];                                 \
        NAME##_schedule(w, kw, 32);                                                        \
    }

/* search_NAME: LANES consecutive nonces at a time, one per element of T. Per nonce it
   compresses from the nonce's first word on (the rounds before it are job->early), computes
   only the schedule words that the nonce reaches, and skips the whole schedule of a second
   chunk that holds no nonce byte. ANY_AT_MOST(x, limit) says whether any element is <= limit. */
#define SEARCH_LANES(NAME, T, LANES, ATTR, ANY_AT_MOST)                                      \
    ATTR static void search_##NAME(const job_t *job, uint64_t start, uint64_t end, result_t *out) { \
        T w0[64], kw0[64], w1[64], kw1[64], w2[64], kw2[64], early[8], mid[8], iv[8];       \
        for (int i = 0; i < 64; i++) {                                                     \
            w0[i] = (T){0} + job->schedule[0][i];                                          \
            kw0[i] = w0[i] + K[i];                                                         \
            w1[i] = (T){0} + job->schedule[1][i];                                          \
            kw1[i] = w1[i] + K[i];                                                         \
            w2[i] = (T){0} + (i == 8 ? PAD8 : i == 15 ? PAD15 : 0);                        \
            kw2[i] = w2[i] + K[i];                                                         \
        }                                                                                  \
        for (int j = 0; j < 8; j++) {                                                      \
            early[j] = (T){0} + job->early[j];                                             \
            mid[j] = (T){0} + job->midstate[j];                                            \
            iv[j] = (T){0} + IV[j];                                                        \
        }                                                                                  \
        uint64_t nonce = start;                                                            \
        for (; end - nonce >= LANES; nonce += LANES) { /* not nonce + LANES <= end: it wraps */ \
            progress(nonce);                                                               \
            uint32_t placed[3][LANES] __attribute__((aligned(32)));                        \
            for (int l = 0; l < LANES; l++) {                                              \
                uint32_t words[3];                                                         \
                nonce_words(job, nonce + (uint64_t)l, words);                              \
                for (int k = 0; k < job->nonce_words; k++) placed[k][l] = words[k];        \
            }                                                                              \
            for (int k = 0; k < job->nonce_words; k++) {                                   \
                int i = job->nonce_word + k;                                               \
                T *w = i < 16 ? w0 : w1, *kw = i < 16 ? kw0 : kw1;                         \
                memcpy(&w[i % 16], placed[k], sizeof(T));                                  \
                kw[i % 16] = w[i % 16] + K[i % 16];                                        \
            }                                                                              \
            NAME##_schedule(w0, kw0, job->schedule_from);                                  \
            T s[8], t[8];                                                                  \
            memcpy(s, early, sizeof s);                                                    \
            NAME##_rounds(s, kw0, job->nonce_word);                                        \
            for (int j = 0; j < 8; j++) s[j] += mid[j];                                    \
            if (job->tail_chunks == 2) {                                                   \
                if (!job->second_fixed) NAME##_schedule(w1, kw1, 16);                      \
                memcpy(t, s, sizeof t);                                                    \
                NAME##_rounds(t, kw1, 0);                                                  \
                for (int j = 0; j < 8; j++) s[j] += t[j];                                  \
            }                                                                              \
            for (int j = 0; j < 8; j++) {                                                  \
                w2[j] = s[j];                                                              \
                kw2[j] = s[j] + K[j];                                                      \
            }                                                                              \
            NAME##_outer_schedule(w2, kw2);                                                \
            memcpy(t, iv, sizeof t);                                                       \
            NAME##_rounds(t, kw2, 0);                                                      \
            if (!ANY_AT_MOST(t[0] + IV[0], job->first_word_limit)) continue;               \
            uint32_t hashes[8][LANES] __attribute__((aligned(32)));                        \
            for (int j = 0; j < 8; j++) {                                                  \
                T word = t[j] + IV[j];                                                     \
                memcpy(hashes[j], &word, sizeof word);                                     \
            }                                                                              \
            for (int l = 0; l < LANES; l++) {                                              \
                uint32_t hash[8];                                                          \
                for (int j = 0; j < 8; j++) hash[j] = hashes[j][l];                        \
                if (settle(job, hash, nonce + (uint64_t)l, start, out)) return;            \
            }                                                                              \
        }                                                                                  \
        finish_tail(job, start, nonce, end, out);                                          \
    }

/* ---------------------------------------------------------------- portable C */

SHA256_LANES(portable, uint32_t, )

static inline int portable_any_at_most(uint32_t x, uint32_t limit) { return x <= limit; }

SEARCH_LANES(portable, uint32_t, 1, , portable_any_at_most)

/* One whole compression of 16 message words, for the block's chunks before the nonce. */
static void compress_portable(uint32_t state[8], const uint32_t words[16]) {
    uint32_t w[64], kw[64], s[8];
    for (int i = 0; i < 16; i++) {
        w[i] = words[i];
        kw[i] = w[i] + K[i];
    }
    portable_schedule(w, kw, 16);
    memcpy(s, state, sizeof s);
    portable_rounds(s, kw, 0);
    for (int j = 0; j < 8; j++) state[j] += s[j];
}

static void compress_bytes_portable(uint32_t state[8], const uint8_t *chunk) {
    uint32_t words[16];
    for (int i = 0; i < 16; i++) words[i] = load_be32(chunk + 4 * i);
    compress_portable(state, words);
}

/* Chunk 0's working state after its rounds 0..count-1: fixed for every nonce while count is at
   most job->nonce_word, the first word that the nonce reaches. */
static void early_state(const job_t *job, int count, uint32_t s[8]) {
    memcpy(s, job->midstate, 32);
    for (int i = 0; i < count; i++) {
        uint32_t t1 = s[7] + BSIG1(s[4]) + CH(s[4], s[5], s[6]) + job->schedule[0][i] + K[i];
        uint32_t t2 = BSIG0(s[0]) + MAJ(s[0], s[1], s[2]);
        memmove(s + 1, s, 7 * sizeof s[0]);
        s[4] += t1;
        s[0] = t1 + t2;
    }
}

/* ---------------------------------------------------------------- x86-64 AVX2, eight nonces a vector */
#if defined(__x86_64__)

#define AVX2_TARGET __attribute__((target("avx2")))
typedef uint32_t v8u __attribute__((vector_size(32)));

SHA256_LANES(avx2, v8u, AVX2_TARGET)

AVX2_TARGET static inline int avx2_any_at_most(v8u x, uint32_t limit) {
    const __m256i bound = _mm256_set1_epi32((int)limit);
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_max_epu32((__m256i)x, bound), bound)) != 0;
}

SEARCH_LANES(avx2, v8u, 8, AVX2_TARGET, avx2_any_at_most)

/* AVX2 in the CPU, and YMM state saved by the OS (XCR0 bits 1 and 2), as AVX needs. */
static int cpu_has_avx2(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX)) return 0;
    unsigned xcr0_low, xcr0_high;
    __asm__ volatile("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    if ((xcr0_low & 6) != 6) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b & bit_AVX2) != 0;
}

/* ---------------------------------------------------------------- x86-64 SHA-NI, n nonces interleaved */

#define NI_TARGET __attribute__((target("sha,sse4.1,ssse3")))
#define NI_INLINE NI_TARGET static inline __attribute__((always_inline))
#define NI_MAX_LANES 3

/* The SHA instructions keep the state as two registers: ABEF and CDGH. */
NI_TARGET static inline void ni_pack(const uint32_t s[8], __m128i *abef, __m128i *cdgh) {
    __m128i dcba = _mm_loadu_si128((const __m128i *)s);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)(s + 4));
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    *abef = _mm_alignr_epi8(cdab, efgh, 8);
    *cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
}

NI_TARGET static inline void ni_unpack(__m128i abef, __m128i cdgh, __m128i *dcba, __m128i *hgfe) {
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    *dcba = _mm_blend_epi16(feba, dchg, 0xF0);
    *hgfe = _mm_alignr_epi8(dchg, feba, 8);
}

/* What the SHA-NI paths add to a job, in their register layout; none of it depends on the nonce. */
typedef struct {
    __m128i mid_abef, mid_cdgh;     /* the midstate */
    __m128i early_abef, early_cdgh; /* chunk 0's state after its round pairs before the nonce */
    int first_pair;                 /* how many such pairs: 0..7 */
    __m128i quads[8];               /* job->words, four to a register */
    __m128i place[8];               /* job->place */
    __m128i second_kw[32];          /* a fixed chunk 1: K + W for each round pair, in the low half */
    __m128i iv_abef, iv_cdgh;
    __m128i pad2, pad3, pad_kw[4];  /* the second hash's padding quads, and K + W for their pairs */
    __m128i pad_msg1, pad_align;    /* schedule terms made of padding alone */
} ni_job_t;

NI_TARGET static inline __m128i ni_words(const uint32_t *w) { return _mm_loadu_si128((const __m128i *)w); }

NI_TARGET static void ni_prepare(const job_t *job, ni_job_t *nj) {
    ni_pack(job->midstate, &nj->mid_abef, &nj->mid_cdgh);
    ni_pack(IV, &nj->iv_abef, &nj->iv_cdgh);
    /* The instructions go two rounds at a time: start after the whole pairs before the nonce. */
    nj->first_pair = job->nonce_word / 2;
    uint32_t early[8];
    early_state(job, 2 * nj->first_pair, early);
    ni_pack(early, &nj->early_abef, &nj->early_cdgh);
    for (int q = 0; q < 8; q++) {
        nj->quads[q] = ni_words(job->words + 4 * q);
        nj->place[q] = _mm_loadu_si128((const __m128i *)job->place[q]);
    }
    for (int p = 0; p < 32; p++) {
        const uint32_t *w = job->schedule[1] + 2 * p;
        nj->second_kw[p] = _mm_set_epi32(0, 0, (int)(w[1] + K[2 * p + 1]), (int)(w[0] + K[2 * p]));
    }
    nj->pad2 = _mm_set_epi32(0, 0, 0, (int)PAD8);
    nj->pad3 = _mm_set_epi32((int)PAD15, 0, 0, 0);
    for (int p = 0; p < 4; p++) {
        const uint32_t w[8] = {PAD8, 0, 0, 0, 0, 0, 0, PAD15};
        nj->pad_kw[p] = _mm_set_epi32(0, 0, (int)(w[2 * p + 1] + K[8 + 2 * p + 1]), (int)(w[2 * p] + K[8 + 2 * p]));
    }
    nj->pad_msg1 = _mm_sha256msg1_epu32(nj->pad2, nj->pad3);
    nj->pad_align = _mm_alignr_epi8(nj->pad3, nj->pad2, 4);
}

/* Four rounds on lane l, KW its K + W for them. The state alternates between the registers:
   the first two rounds write the new ABEF over CDGH, the next two write it back. */
#define NI_FOUR(l, KW)                                                              \
    do {                                                                            \
        __m128i kw_ = (KW);                                                         \
        s1[l] = _mm_sha256rnds2_epu32(s1[l], s0[l], kw_);                           \
        s0[l] = _mm_sha256rnds2_epu32(s0[l], s1[l], _mm_shuffle_epi32(kw_, 0x0E));  \
    } while (0)
#define NI_K(q) _mm_loadu_si128((const __m128i *)(K + 4 * (q)))
#define NI_SCHEDULE(W0, W1, W2, W3) \
    _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(W0, W1), _mm_alignr_epi8(W3, W2, 4)), W3)

/* Each lane's message quads live in memory, w[l][q] for quad q, behind loops over q with a
   run-time index: the registers hold the lanes' states, which the rounds wait on, and the
   few temporaries of one lane's schedule step. */

/* Rounds 4 * from to 4 * to - 1 on each lane, from its message quads. */
NI_INLINE void ni_quads(int n, __m128i s0[], __m128i s1[], __m128i w[][16], int from, int to) {
    for (int q = from; q < to; q++) {
        const __m128i k = NI_K(q);
        for (int l = 0; l < n; l++) NI_FOUR(l, _mm_add_epi32(w[l][q], k));
    }
}

/* A chunk whose words are all fixed: K + W for every pair is ready, no schedule is left. */
NI_INLINE void ni_fixed_rounds(int n, __m128i s0[], __m128i s1[], const __m128i kw[], int pairs) {
    for (int p = 0; p < pairs; p += 2) {
        for (int l = 0; l < n; l++) {
            s1[l] = _mm_sha256rnds2_epu32(s1[l], s0[l], kw[p]);
            s0[l] = _mm_sha256rnds2_epu32(s0[l], s1[l], kw[p + 1]);
        }
    }
}

/* Quads `from` to 15: each lane's next quad from the four before it, and its four rounds. */
NI_INLINE void ni_scheduled(int n, __m128i s0[], __m128i s1[], __m128i w[][16], int from) {
    for (int q = from; q < 16; q++) {
        const __m128i k = NI_K(q);
        for (int l = 0; l < n; l++) {
            w[l][q] = NI_SCHEDULE(w[l][q - 4], w[l][q - 3], w[l][q - 2], w[l][q - 1]);
            NI_FOUR(l, _mm_add_epi32(w[l][q], k));
        }
    }
}

/* A chunk's rounds from pair `first_pair` (0..7) on, w[l][0..3] holding lane l's words. s0 and
   s1 come in holding the state after the pairs skipped, where their parity puts it (odd:
   ABEF in s1), and leave as ABEF and CDGH after round 63. */
NI_INLINE void ni_rounds(int n, __m128i s0[], __m128i s1[], __m128i w[][16], int first_pair) {
    int q = first_pair / 2;
    if (first_pair & 1) { /* the second half of quad q */
        for (int l = 0; l < n; l++)
            s0[l] = _mm_sha256rnds2_epu32(s0[l], s1[l], _mm_shuffle_epi32(_mm_add_epi32(w[l][q], NI_K(q)), 0x0E));
        q++;
    }
    ni_quads(n, s0, s1, w, q, 4);
    ni_scheduled(n, s0, s1, w, 4);
}

/* The second hash of n lanes, from their first digests: s0 and s1 get ABEF and CDGH before
   the IV is added. Its quads 2 and 3 are padding, so their rounds take K + W ready-made, and
   quads 4 to 7 use the schedule terms made of padding alone as constants. */
NI_INLINE void ni_outer(int n, const ni_job_t *nj, const __m128i abef[], const __m128i cdgh[],
                        __m128i s0[], __m128i s1[], __m128i w[][16]) {
    for (int l = 0; l < n; l++) {
        ni_unpack(abef[l], cdgh[l], &w[l][0], &w[l][1]); /* the digest's words 0..3 and 4..7 */
        s0[l] = nj->iv_abef;
        s1[l] = nj->iv_cdgh;
    }
    ni_quads(n, s0, s1, w, 0, 2);
    ni_fixed_rounds(n, s0, s1, nj->pad_kw, 4);
    for (int l = 0; l < n; l++) {
        w[l][4] = _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(w[l][0], w[l][1]), nj->pad_align), nj->pad3);
        NI_FOUR(l, _mm_add_epi32(w[l][4], NI_K(4)));
    }
    for (int l = 0; l < n; l++) {
        w[l][5] = _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(w[l][1], nj->pad2), _mm_alignr_epi8(w[l][4], nj->pad3, 4)), w[l][4]);
        NI_FOUR(l, _mm_add_epi32(w[l][5], NI_K(5)));
    }
    for (int l = 0; l < n; l++) {
        w[l][6] = _mm_sha256msg2_epu32(_mm_add_epi32(nj->pad_msg1, _mm_alignr_epi8(w[l][5], w[l][4], 4)), w[l][5]);
        NI_FOUR(l, _mm_add_epi32(w[l][6], NI_K(6)));
    }
    for (int l = 0; l < n; l++) {
        w[l][7] = _mm_sha256msg2_epu32(
            _mm_add_epi32(_mm_sha256msg1_epu32(nj->pad3, w[l][4]), _mm_alignr_epi8(w[l][6], w[l][5], 4)), w[l][6]);
        NI_FOUR(l, _mm_add_epi32(w[l][7], NI_K(7)));
    }
    ni_scheduled(n, s0, s1, w, 8);
}

/* Quad q of a lane's tail words, its nonce (as MOVQ loaded it) put in place. */
NI_INLINE __m128i ni_quad_with_nonce(const job_t *job, const ni_job_t *nj, __m128i nonce, int q) {
    if (!(job->nonce_quads & (1u << q))) return nj->quads[q];
    return _mm_or_si128(nj->quads[q], _mm_shuffle_epi8(nonce, nj->place[q]));
}

/* n consecutive nonces at a time, interleaved so that each one's SHA256RNDS2 latency hides
   behind the others'. Unless some lane's word 0 is within the limit, no lane is looked at. */
NI_INLINE void ni_search(int n, const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    ni_job_t nj;
    ni_prepare(job, &nj);
    const int odd = nj.first_pair & 1;
    uint64_t nonce = start;
    for (; end - nonce >= (uint64_t)n; nonce += (uint64_t)n) { /* not nonce + n <= end: it wraps */
        progress(nonce);
        __m128i nonces[NI_MAX_LANES], w[NI_MAX_LANES][16], s0[NI_MAX_LANES], s1[NI_MAX_LANES];
        __m128i abef[NI_MAX_LANES], cdgh[NI_MAX_LANES];
        for (int l = 0; l < n; l++) {
            nonces[l] = _mm_cvtsi64_si128((long long)(nonce + (uint64_t)l));
            for (int q = 0; q < 4; q++) w[l][q] = ni_quad_with_nonce(job, &nj, nonces[l], q);
            s0[l] = odd ? nj.early_cdgh : nj.early_abef;
            s1[l] = odd ? nj.early_abef : nj.early_cdgh;
        }
        ni_rounds(n, s0, s1, w, nj.first_pair);
        for (int l = 0; l < n; l++) {
            abef[l] = _mm_add_epi32(s0[l], nj.mid_abef);
            cdgh[l] = _mm_add_epi32(s1[l], nj.mid_cdgh);
            s0[l] = abef[l];
            s1[l] = cdgh[l];
        }
        if (job->tail_chunks == 2) {
            if (job->second_fixed) {
                ni_fixed_rounds(n, s0, s1, nj.second_kw, 32);
            } else {
                for (int l = 0; l < n; l++)
                    for (int q = 0; q < 4; q++) w[l][q] = ni_quad_with_nonce(job, &nj, nonces[l], 4 + q);
                ni_rounds(n, s0, s1, w, 0);
            }
            for (int l = 0; l < n; l++) {
                abef[l] = _mm_add_epi32(abef[l], s0[l]);
                cdgh[l] = _mm_add_epi32(cdgh[l], s1[l]);
            }
        }
        ni_outer(n, &nj, abef, cdgh, s0, s1, w);
        /* Word 0 (A) sits in element 3 of ABEF: most nonces stop here. */
        uint32_t first[NI_MAX_LANES];
        int any = 0;
        for (int l = 0; l < n; l++) {
            s0[l] = _mm_add_epi32(s0[l], nj.iv_abef);
            first[l] = (uint32_t)_mm_extract_epi32(s0[l], 3);
            any |= first[l] <= job->first_word_limit;
        }
        if (!any) continue;
        for (int l = 0; l < n; l++) {
            if (first[l] > job->first_word_limit) continue;
            uint32_t hash[8];
            __m128i dcba, hgfe;
            ni_unpack(s0[l], _mm_add_epi32(s1[l], nj.iv_cdgh), &dcba, &hgfe);
            _mm_storeu_si128((__m128i *)hash, dcba);
            _mm_storeu_si128((__m128i *)(hash + 4), hgfe);
            if (settle(job, hash, nonce + (uint64_t)l, start, out)) return;
        }
    }
    finish_tail(job, start, nonce, end, out);
}

/* Three lanes measured best on Zen 3 (AMD EPYC): with two, SHA256RNDS2's latency shows; with
   four or six, the SHA unit is already busy and more in flight only costs spills. */
NI_TARGET static void search_sha_ni(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    ni_search(3, job, start, end, out);
}

NI_TARGET static void search_sha_ni2(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    ni_search(2, job, start, end, out);
}

static int cpu_has_sha_ni(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_SSE4_1) || !(c & bit_SSSE3)) return 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 29) & 1;
}
#endif

/* ---------------------------------------------------------------- ARMv8 crypto extensions */
#if defined(__aarch64__)

#define ARM_TARGET __attribute__((target("+sha2")))
#define ARM_LANES 2

/* Four rounds on lane l, KW its K + W for them. */
#define ARM_FOUR(l, KW)                                                     \
    do {                                                                    \
        uint32x4_t kw_ = (KW), abcd_ = abcd[l];                             \
        abcd[l] = vsha256hq_u32(abcd[l], efgh[l], kw_);                     \
        efgh[l] = vsha256h2q_u32(efgh[l], abcd_, kw_);                      \
    } while (0)
#define ARM_K(q) vld1q_u32(K + 4 * (q))
#define ARM_SCHEDULE(W0, W1, W2, W3) vsha256su1q_u32(vsha256su0q_u32(W0, W1), W2, W3)

/* What the ARMv8 path adds to a job, in its registers; none of it depends on the nonce. */
typedef struct {
    uint32x4_t mid[2], iv[2];  /* ABCD and EFGH */
    uint32x4_t early[2];       /* chunk 0's state after its quads before the nonce */
    int first_quad;            /* how many such quads: 0..3 */
    uint32x4_t quads[8];       /* job->words, four to a register */
    uint8x16_t place[8];       /* TBL indices: job->place */
    uint32x4_t second_kw[16];  /* a fixed chunk 1: K + W for each quad */
    uint32x4_t pad2, pad3, pad_kw2, pad_kw3, pad_su0; /* the second hash's padding */
} arm_job_t;

ARM_TARGET static void arm_prepare(const job_t *job, arm_job_t *aj) {
    aj->mid[0] = vld1q_u32(job->midstate);
    aj->mid[1] = vld1q_u32(job->midstate + 4);
    aj->iv[0] = vld1q_u32(IV);
    aj->iv[1] = vld1q_u32(IV + 4);
    /* The instructions go four rounds at a time: start after the whole quads before the nonce. */
    aj->first_quad = job->nonce_word / 4;
    uint32_t early[8], kw[64];
    early_state(job, 4 * aj->first_quad, early);
    aj->early[0] = vld1q_u32(early);
    aj->early[1] = vld1q_u32(early + 4);
    for (int q = 0; q < 8; q++) {
        aj->quads[q] = vld1q_u32(job->words + 4 * q);
        aj->place[q] = vld1q_u8(job->place[q]);
    }
    for (int i = 0; i < 64; i++) kw[i] = job->schedule[1][i] + K[i];
    for (int q = 0; q < 16; q++) aj->second_kw[q] = vld1q_u32(kw + 4 * q);
    const uint32_t pad[8] = {PAD8, 0, 0, 0, 0, 0, 0, PAD15};
    aj->pad2 = vld1q_u32(pad);
    aj->pad3 = vld1q_u32(pad + 4);
    aj->pad_kw2 = vaddq_u32(aj->pad2, ARM_K(2));
    aj->pad_kw3 = vaddq_u32(aj->pad3, ARM_K(3));
    aj->pad_su0 = vsha256su0q_u32(aj->pad2, aj->pad3);
}

/* Quads `from` to 15: each lane's next quad from the four before it, and its four rounds. */
ARM_TARGET static inline void arm_scheduled(uint32x4_t abcd[], uint32x4_t efgh[], uint32x4_t w[][16], int from) {
    for (int q = from; q < 16; q++) {
        for (int l = 0; l < ARM_LANES; l++) {
            w[l][q] = ARM_SCHEDULE(w[l][q - 4], w[l][q - 3], w[l][q - 2], w[l][q - 1]);
            ARM_FOUR(l, vaddq_u32(w[l][q], ARM_K(q)));
        }
    }
}

/* A chunk's rounds from quad `first_quad` (0..3) on, w[l][0..3] holding lane l's words; the
   state comes in as it is after the quads skipped. */
ARM_TARGET static inline void arm_rounds(uint32x4_t abcd[], uint32x4_t efgh[], uint32x4_t w[][16], int first_quad) {
    for (int q = first_quad; q < 4; q++)
        for (int l = 0; l < ARM_LANES; l++) ARM_FOUR(l, vaddq_u32(w[l][q], ARM_K(q)));
    arm_scheduled(abcd, efgh, w, 4);
}

/* The second hash of both lanes from their first digests (h0: ABCD, h1: EFGH), before the IV
   is added. Quads 2 and 3 are padding: K + W ready-made, and su0 of the two is a constant. */
ARM_TARGET static inline void arm_outer(const arm_job_t *aj, const uint32x4_t h0[], const uint32x4_t h1[],
                                        uint32x4_t abcd[], uint32x4_t efgh[], uint32x4_t w[][16]) {
    for (int l = 0; l < ARM_LANES; l++) {
        w[l][0] = h0[l];
        w[l][1] = h1[l];
        abcd[l] = aj->iv[0];
        efgh[l] = aj->iv[1];
        ARM_FOUR(l, vaddq_u32(w[l][0], ARM_K(0)));
        ARM_FOUR(l, vaddq_u32(w[l][1], ARM_K(1)));
        ARM_FOUR(l, aj->pad_kw2);
        ARM_FOUR(l, aj->pad_kw3);
        w[l][4] = ARM_SCHEDULE(w[l][0], w[l][1], aj->pad2, aj->pad3);
        ARM_FOUR(l, vaddq_u32(w[l][4], ARM_K(4)));
        w[l][5] = ARM_SCHEDULE(w[l][1], aj->pad2, aj->pad3, w[l][4]);
        ARM_FOUR(l, vaddq_u32(w[l][5], ARM_K(5)));
        w[l][6] = vsha256su1q_u32(aj->pad_su0, w[l][4], w[l][5]);
        ARM_FOUR(l, vaddq_u32(w[l][6], ARM_K(6)));
        w[l][7] = ARM_SCHEDULE(aj->pad3, w[l][4], w[l][5], w[l][6]);
        ARM_FOUR(l, vaddq_u32(w[l][7], ARM_K(7)));
    }
    arm_scheduled(abcd, efgh, w, 8);
}

/* Quad q of a lane's tail words, its nonce (least significant byte first) put in place. */
ARM_TARGET static inline uint32x4_t arm_quad_with_nonce(const job_t *job, const arm_job_t *aj, uint8x16_t nonce, int q) {
    if (!(job->nonce_quads & (1u << q))) return aj->quads[q];
    return vorrq_u32(aj->quads[q], vreinterpretq_u32_u8(vqtbl1q_u8(nonce, aj->place[q])));
}

ARM_TARGET static void search_armv8(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    arm_job_t aj;
    arm_prepare(job, &aj);
    uint64_t nonce = start;
    for (; end - nonce >= ARM_LANES; nonce += ARM_LANES) { /* not nonce + 1 < end: that wraps at 2^64 - 1 */
        progress(nonce);
        uint8x16_t nonces[ARM_LANES];
        uint32x4_t w[ARM_LANES][16], abcd[ARM_LANES], efgh[ARM_LANES], h0[ARM_LANES], h1[ARM_LANES];
        for (int l = 0; l < ARM_LANES; l++) {
            nonces[l] = vreinterpretq_u8_u64(vcombine_u64(vcreate_u64(nonce + (uint64_t)l), vcreate_u64(0)));
            for (int q = 0; q < 4; q++) w[l][q] = arm_quad_with_nonce(job, &aj, nonces[l], q);
            abcd[l] = aj.early[0];
            efgh[l] = aj.early[1];
        }
        arm_rounds(abcd, efgh, w, aj.first_quad);
        for (int l = 0; l < ARM_LANES; l++) {
            h0[l] = abcd[l] = vaddq_u32(abcd[l], aj.mid[0]);
            h1[l] = efgh[l] = vaddq_u32(efgh[l], aj.mid[1]);
        }
        if (job->tail_chunks == 2) {
            if (job->second_fixed) {
                for (int q = 0; q < 16; q++)
                    for (int l = 0; l < ARM_LANES; l++) ARM_FOUR(l, aj.second_kw[q]);
            } else {
                for (int l = 0; l < ARM_LANES; l++)
                    for (int q = 0; q < 4; q++) w[l][q] = arm_quad_with_nonce(job, &aj, nonces[l], 4 + q);
                arm_rounds(abcd, efgh, w, 0);
            }
            for (int l = 0; l < ARM_LANES; l++) {
                h0[l] = vaddq_u32(h0[l], abcd[l]);
                h1[l] = vaddq_u32(h1[l], efgh[l]);
            }
        }
        arm_outer(&aj, h0, h1, abcd, efgh, w);
        uint32_t first[ARM_LANES];
        int any = 0;
        for (int l = 0; l < ARM_LANES; l++) {
            abcd[l] = vaddq_u32(abcd[l], aj.iv[0]);
            first[l] = vgetq_lane_u32(abcd[l], 0);
            any |= first[l] <= job->first_word_limit;
        }
        if (!any) continue;
        for (int l = 0; l < ARM_LANES; l++) {
            if (first[l] > job->first_word_limit) continue;
            uint32_t hash[8];
            vst1q_u32(hash, abcd[l]);
            vst1q_u32(hash + 4, vaddq_u32(efgh[l], aj.iv[1]));
            if (settle(job, hash, nonce + (uint64_t)l, start, out)) return;
        }
    }
    finish_tail(job, start, nonce, end, out);
}

static int cpu_has_armv8_sha2(void) { return (getauxval(AT_HWCAP) & HWCAP_SHA2) != 0; }
#endif

/* ---------------------------------------------------------------- jobs and dispatch */

typedef void (*search_fn)(const job_t *, uint64_t, uint64_t, result_t *);

typedef struct {
    const char *name;
    search_fn search;
    int (*available)(void);
} path_t;

static int always(void) { return 1; }

static const path_t PATHS[] = {
#if defined(__x86_64__)
    {"sha-ni", search_sha_ni, cpu_has_sha_ni},
    {"sha-ni-2", search_sha_ni2, cpu_has_sha_ni},
    {"avx2", search_avx2, cpu_has_avx2},
#endif
#if defined(__aarch64__)
    {"armv8-sha2", search_armv8, cpu_has_armv8_sha2},
#endif
    {"portable", search_portable, always},
};
#define PATH_COUNT ((int)(sizeof PATHS / sizeof PATHS[0]))

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* A block hashed up to its last whole 64-byte chunk: all that a job needs of it, whatever its length. */
typedef struct {
    uint32_t midstate[8];
    uint8_t rest[64]; /* the bytes after the last whole chunk */
    size_t rest_len;
    uint64_t length;  /* bytes in the whole block */
} prefix_t;

/* The block a served kernel last accepted, which "=" names, so a big block crosses the pipe once. */
typedef struct {
    prefix_t prefix;
    int present;
} memory_t;

/* A checked job: what the search needs. */
typedef struct {
    job_t job;
    uint64_t start, end;
} request_t;

/* Hashes the whole chunks of a block given as hex ("-" is the empty block); NULL, or why not. */
static const char *absorb_block(prefix_t *prefix, const char *hex) {
    if (strcmp(hex, "-") == 0) hex = "";
    size_t hex_len = strlen(hex);
    if (hex_len % 2) return "block has an odd number of hex digits";
    memcpy(prefix->midstate, IV, 32);
    prefix->rest_len = 0;
    prefix->length = hex_len / 2;
    for (size_t i = 0; i < hex_len; i += 2) {
        int hi = hex_value((unsigned char)hex[i]), lo = hex_value((unsigned char)hex[i + 1]);
        if (hi < 0 || lo < 0) return "block is not hex";
        prefix->rest[prefix->rest_len++] = (uint8_t)(hi * 16 + lo);
        if (prefix->rest_len == 64) {
            compress_bytes_portable(prefix->midstate, prefix->rest);
            prefix->rest_len = 0;
        }
    }
    return NULL;
}

/* The per-nonce layout: the rest of the block, the nonce, the padding and the length. */
static void build_job(job_t *job, const prefix_t *prefix, int nonce_bytes, int difficulty) {
    memset(job, 0, sizeof *job);
    memcpy(job->midstate, prefix->midstate, 32);
    size_t message_tail = prefix->rest_len + (size_t)nonce_bytes;
    job->tail_chunks = message_tail + 9 <= 64 ? 1 : 2;
    memcpy(job->tail, prefix->rest, prefix->rest_len);
    job->nonce_offset = (int)prefix->rest_len;
    job->nonce_bytes = nonce_bytes;
    job->tail[message_tail] = 0x80;
    uint64_t bits = 8 * (prefix->length + (uint64_t)nonce_bytes);
    uint8_t *length = job->tail + 64 * job->tail_chunks - 8;
    for (int i = 7; i >= 0; i--) { length[i] = (uint8_t)bits; bits >>= 8; }
    job->difficulty = difficulty;
    job->first_word_limit = difficulty >= 32 ? 0 : (uint32_t)((1ull << (32 - difficulty)) - 1);
    /* What the paths take ready-made, none of it depending on the nonce. */
    for (int i = 0; i < 32; i++) job->words[i] = load_be32(job->tail + 4 * i);
    int last_byte = job->nonce_offset + nonce_bytes - 1;
    job->nonce_word = job->nonce_offset / 4;
    job->nonce_words = last_byte / 4 - job->nonce_word + 1;
    job->nonce_shift = 8 * (3 - last_byte % 4);
    job->second_fixed = job->tail_chunks == 2 && last_byte < 64;
    for (int c = 0; c < 2; c++) {
        uint32_t kw[64];
        memcpy(job->schedule[c], job->words + 16 * c, 64);
        portable_schedule(job->schedule[c], kw, 16);
    }
    for (int q = 0; q < 8; q++) {
        for (int byte = 0; byte < 16; byte++) {
            /* Word j's big-endian byte k sits at 4j + 3 - k in a register of four words. */
            int at = 16 * q + byte, index = at - job->nonce_offset, slot = 4 * (byte / 4) + 3 - byte % 4;
            job->place[q][slot] = 0x80;
            if (index >= 0 && index < nonce_bytes) {
                job->place[q][slot] = (uint8_t)(nonce_bytes - 1 - index);
                job->nonce_quads |= 1u << q;
            }
        }
    }
    int reached[64] = {0}; /* chunk 0's words that the nonce reaches */
    for (int i = job->nonce_word; i <= last_byte / 4 && i < 16; i++) reached[i] = 1;
    job->schedule_from = 64;
    for (int i = 16; i < 64; i++) {
        reached[i] = reached[i - 2] | reached[i - 7] | reached[i - 15] | reached[i - 16];
        if (reached[i] && job->schedule_from == 64) job->schedule_from = i;
    }
    early_state(job, job->nonce_word, job->early);
}

/* 0 and the value when `text` is a whole decimal number up to `limit`. Digits only: strtoull
   alone would take a sign, leading spaces or trailing junk, and clamps an overflow. */
static int parse_number(const char *text, unsigned long long limit, unsigned long long *value) {
    if (*text < '0' || *text > '9') return -1;
    errno = 0;
    char *stop;
    unsigned long long parsed = strtoull(text, &stop, 10);
    if (*stop != '\0' || errno == ERANGE || parsed > limit) return -1;
    *value = parsed;
    return 0;
}

/* Checks a job's five fields (block, nonce bytes, D, start, end) and fills `request`; NULL,
   or why the job is refused. With a memory, "=" names its block and a new block replaces it. */
static const char *parse_job(char *const *fields, memory_t *memory, request_t *request) {
    unsigned long long nonce_bytes, difficulty, start, end;
    if (parse_number(fields[1], 8, &nonce_bytes) != 0 || (nonce_bytes != 4 && nonce_bytes != 8))
        return "nonce bytes must be 4 or 8";
    if (parse_number(fields[2], 256, &difficulty) != 0 || difficulty < 1)
        return "difficulty must be a whole number from 1 to 256";
    if (parse_number(fields[3], UINT64_MAX, &start) != 0) return "start must be a whole number below 2^64";
    if (parse_number(fields[4], UINT64_MAX, &end) != 0) return "end must be a whole number below 2^64";
    if (start >= end) return "start must be below end";
    if (nonce_bytes == 4 && end > (1ull << 32)) return "end is past the 4-byte nonce space";
    prefix_t given;
    const prefix_t *prefix = &given;
    if (strcmp(fields[0], "=") == 0) {
        if (memory == NULL || !memory->present) return "= names no earlier block";
        prefix = &memory->prefix;
    } else {
        const char *why = absorb_block(&given, fields[0]);
        if (why) return why;
        if (memory != NULL) {
            memory->prefix = given;
            memory->present = 1;
        }
    }
    build_job(&request->job, prefix, (int)nonce_bytes, (int)difficulty);
    request->start = start;
    request->end = end;
    return NULL;
}

static const path_t *choose_path(const char *forced) {
    for (int i = 0; i < PATH_COUNT; i++) {
        if (forced ? strcmp(forced, PATHS[i].name) == 0 : PATHS[i].available()) {
            if (forced && !PATHS[i].available()) return NULL;
            return &PATHS[i];
        }
    }
    return NULL;
}

static void print_result(const result_t *result) {
    printf("%d %llu %llu ", result->found, (unsigned long long)result->nonce, (unsigned long long)result->checked);
    if (result->found) {
        for (int i = 0; i < 8; i++) printf("%08x", result->hash[i]);
    } else {
        putchar('-');
    }
    putchar('\n');
    fflush(stdout);
}

/* ---------------------------------------------------------------- --serve */

#define JOB_FIELDS 6
#define READ_SIZE ((size_t)64 << 10)
#define LINE_TOO_LONG ((size_t)-1)

/* stdin, a line at a time, in one buffer that grows to the longest line (up to MAX_LINE). */
typedef struct {
    char *data;
    size_t capacity;
    size_t start;   /* the first unread byte */
    size_t used;    /* the end of the bytes read */
    int overlong;   /* the line being read is past MAX_LINE: drop it up to its newline */
} reader_t;

/* The next line, its newline replaced by NUL and its length in *length (LINE_TOO_LONG for a
   line past MAX_LINE, consumed whole); NULL at the end of input. A last line without a
   newline still counts. */
static char *next_line(reader_t *r, size_t *length) {
    size_t searched = r->start;
    for (;;) {
        char *newline = r->used > searched ? memchr(r->data + searched, '\n', r->used - searched) : NULL;
        if (newline) {
            char *line = r->data + r->start;
            *newline = '\0';
            size_t found = (size_t)(newline - line);
            *length = r->overlong || found > MAX_LINE ? LINE_TOO_LONG : found;
            r->overlong = 0;
            r->start = (size_t)(newline - r->data) + 1;
            return line;
        }
        searched = r->used;
        if (r->used - r->start > MAX_LINE) { /* too long already: keep none of it */
            r->overlong = 1;
            r->start = r->used = searched = 0;
        }
        if (r->start > 0) { /* make room: the unread bytes to the front */
            memmove(r->data, r->data + r->start, r->used - r->start);
            r->used -= r->start;
            searched -= r->start;
            r->start = 0;
        }
        if (r->capacity - r->used < READ_SIZE + 1) { /* + 1 for the NUL after a last line */
            size_t capacity = r->capacity ? 2 * r->capacity : 2 * READ_SIZE;
            char *grown = realloc(r->data, capacity);
            if (grown == NULL) {
                fprintf(stderr, "sha256d: out of memory reading a line\n");
                exit(4);
            }
            r->data = grown;
            r->capacity = capacity;
        }
        ssize_t got = read(0, r->data + r->used, r->capacity - r->used - 1);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            if (r->used == r->start && !r->overlong) return NULL;
            char *line = r->data + r->start;
            r->data[r->used] = '\0';
            *length = r->overlong || r->used - r->start > MAX_LINE ? LINE_TOO_LONG : r->used - r->start;
            r->overlong = 0;
            r->start = r->used;
            return line;
        }
        r->used += (size_t)got;
    }
}

static void refuse(const char *id, const char *why) {
    printf("error %s %s\n", id, why);
    fflush(stdout);
}

/* Answers one --serve line with exactly one line (after any progress lines), whatever it holds. */
static void serve_line(const path_t *path, char *line, size_t length, memory_t *memory) {
    if (length == LINE_TOO_LONG) {
        char why[64];
        snprintf(why, sizeof why, "line longer than %zu bytes", MAX_LINE);
        refuse("-", why);
        return;
    }
    if (memchr(line, '\0', length)) {
        refuse("-", "line holds a NUL byte");
        return;
    }
    char *fields[JOB_FIELDS];
    int count = 0, empty = 0;
    char *cursor = line, *end = line + length;
    for (;;) {
        char *space = memchr(cursor, ' ', (size_t)(end - cursor));
        char *stop = space ? space : end;
        if (stop == cursor) empty = 1;
        if (count < JOB_FIELDS) fields[count] = cursor;
        count++;
        *stop = '\0';
        if (!space) break;
        cursor = space + 1;
    }
    /* Echo the id whenever it reads as one, so the worker can tell whose error this is. */
    unsigned long long id = 0;
    char id_text[24] = "-";
    if (parse_number(fields[0], UINT64_MAX, &id) == 0) snprintf(id_text, sizeof id_text, "%llu", id);
    if (empty) {
        refuse(id_text, "fields must be split by single spaces");
        return;
    }
    if (count != JOB_FIELDS) {
        char why[64];
        snprintf(why, sizeof why, "expected %d fields, not %d", JOB_FIELDS, count);
        refuse(id_text, why);
        return;
    }
    if (strcmp(id_text, "-") == 0) {
        refuse(id_text, "job id must be a whole number below 2^64");
        return;
    }
    request_t request;
    const char *why = parse_job(fields + 1, memory, &request);
    if (why) {
        refuse(id_text, why);
        return;
    }
    result_t result = {0};
    begin_progress(id, request.start);
    path->search(&request.job, request.start, request.end, &result);
    printf("%s ", id_text);
    print_result(&result);
}

int main(int argc, char **argv) {
    const char *forced = NULL;
    int serve = 0, once = 0, list = 0, arg = 1;
    for (; arg < argc; arg++) {
        if (strcmp(argv[arg], "--path") == 0 && arg + 1 < argc) forced = argv[++arg];
        else if (strcmp(argv[arg], "--serve") == 0) serve = 1;
        else if (strcmp(argv[arg], "--once") == 0) { once = 1; arg++; break; }
        else if (strcmp(argv[arg], "--paths") == 0) list = 1;
        else { fprintf(stderr, "usage: sha256d --paths | [--path P] --serve | [--path P] --once BLOCK NB D START END\n"); return 2; }
    }
    if (list) {
        for (int i = 0; i < PATH_COUNT; i++)
            if (PATHS[i].available()) printf("%s\n", PATHS[i].name);
        return 0;
    }
    const path_t *path = choose_path(forced);
    if (!path) { fprintf(stderr, "path %s is not available on this CPU\n", forced ? forced : "?"); return 3; }
    if (once) {
        if (argc - arg != 5) { fprintf(stderr, "--once needs BLOCK NB D START END\n"); return 2; }
        request_t request;
        const char *why = parse_job(argv + arg, NULL, &request);
        if (why) { printf("error %s\n", why); fflush(stdout); return 1; }
        result_t result = {0};
        begin_progress(0, request.start);
        path->search(&request.job, request.start, request.end, &result);
        print_result(&result);
        return 0;
    }
    if (!serve) { fprintf(stderr, "give --serve, --once or --paths\n"); return 2; }
    /* A served kernel belongs to one worker core: it must not outlive it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    report_progress = 1;
    printf("ready %s\n", path->name);
    fflush(stdout);
    reader_t reader = {0};
    memory_t memory = {0};
    size_t length;
    char *line;
    while ((line = next_line(&reader, &length)) != NULL) serve_line(path, line, length, &memory);
    free(reader.data);
    return 0;
}
