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
#define PROGRESS_MASK ((1u << 20) - 1)
static int report_progress = 0;
static unsigned long long progress_job_id = 0;

static inline void progress(uint64_t nonce, uint64_t start) {
    if (report_progress && ((nonce - start) & PROGRESS_MASK) == 0 && nonce != start) {
        printf("p %llu %llu\n", progress_job_id, (unsigned long long)(nonce - start));
        fflush(stdout);
    }
}

/* Everything about a job that does not change from one nonce to the next. */
typedef struct {
    uint32_t midstate[8];  /* state after the block's whole chunks before the nonce */
    uint8_t tail[128];     /* the rest of the message, padded, nonce bytes to be filled in */
    int tail_chunks;       /* 1 or 2 chunks compressed per nonce */
    int nonce_offset;      /* where the nonce starts in tail */
    int nonce_bytes;       /* 4 or 8 */
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

static inline void put_nonce(uint8_t *tail, const job_t *job, uint64_t nonce) {
    uint8_t *p = tail + job->nonce_offset;
    for (int i = job->nonce_bytes - 1; i >= 0; i--) {
        p[i] = (uint8_t)nonce;
        nonce >>= 8;
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

/* Two nonces hashed side by side: report the lower golden one, if either is. */
static int settle_pair(const job_t *job, const uint32_t hash_a[8], const uint32_t hash_b[8],
                       uint64_t nonce, uint64_t start, result_t *out) {
    const uint32_t *hashes[2] = {hash_a, hash_b};
    for (int lane = 0; lane < 2; lane++) {
        if (is_golden(hashes[lane], job->difficulty)) {
            out->found = 1;
            out->nonce = nonce + (uint64_t)lane;
            out->checked = nonce + (uint64_t)lane - start + 1;
            memcpy(out->hash, hashes[lane], 32);
            return 1;
        }
    }
    return 0;
}

static void search_portable(const job_t *job, uint64_t start, uint64_t end, result_t *out);

/* A two-lane path leaves an odd last nonce to the portable code; the count covers both. */
static void finish_odd(const job_t *job, uint64_t start, uint64_t nonce, uint64_t end, result_t *out) {
    if (nonce < end) {
        search_portable(job, nonce, end, out);
        out->checked += nonce - start;
        return;
    }
    out->checked = end - start;
}

/* ---------------------------------------------------------------- portable C */

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void compress_portable(uint32_t state[8], const uint32_t block_words[16]) {
    uint32_t w[64];
    memcpy(w, block_words, 64);
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
        uint32_t t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    state[0] += a; state[1] += b; state[2] += c; state[3] += d;
    state[4] += e; state[5] += f; state[6] += g; state[7] += h;
}

static void compress_bytes_portable(uint32_t state[8], const uint8_t *chunk) {
    uint32_t words[16];
    for (int i = 0; i < 16; i++) words[i] = load_be32(chunk + 4 * i);
    compress_portable(state, words);
}

static void search_portable(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    uint8_t tail[128];
    memcpy(tail, job->tail, sizeof tail);
    uint32_t second[16] = {0};
    second[8] = 0x80000000u;
    second[15] = 256;
    for (uint64_t nonce = start; nonce < end; nonce++) {
        progress(nonce, start);
        put_nonce(tail, job, nonce);
        uint32_t state[8];
        memcpy(state, job->midstate, 32);
        compress_bytes_portable(state, tail);
        if (job->tail_chunks == 2) compress_bytes_portable(state, tail + 64);
        memcpy(second, state, 32);
        uint32_t hash[8];
        memcpy(hash, IV, 32);
        compress_portable(hash, second);
        if (hash[0] > job->first_word_limit) continue;
        if (is_golden(hash, job->difficulty)) {
            out->found = 1;
            out->nonce = nonce;
            out->checked = nonce - start + 1;
            memcpy(out->hash, hash, 32);
            return;
        }
    }
    out->checked = end - start;
}

/* ---------------------------------------------------------------- x86-64 SHA-NI */
#if defined(__x86_64__)

#define NI_TARGET __attribute__((target("sha,sse4.1,ssse3")))

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

/* Four rounds on both lanes: x is lane A, y is lane B, so their latencies overlap. */
#define NI_ROUNDS2(M_A, M_B, k)                                              \
    do {                                                                     \
        __m128i ka = _mm_add_epi32(M_A, k), kb = _mm_add_epi32(M_B, k);      \
        s1a = _mm_sha256rnds2_epu32(s1a, s0a, ka);                           \
        s1b = _mm_sha256rnds2_epu32(s1b, s0b, kb);                           \
        ka = _mm_shuffle_epi32(ka, 0x0E);                                    \
        kb = _mm_shuffle_epi32(kb, 0x0E);                                    \
        s0a = _mm_sha256rnds2_epu32(s0a, s1a, ka);                           \
        s0b = _mm_sha256rnds2_epu32(s0b, s1b, kb);                           \
    } while (0)

#define NI_SCHEDULE(W0, W1, W2, W3) \
    _mm_sha256msg2_epu32(_mm_add_epi32(_mm_sha256msg1_epu32(W0, W1), _mm_alignr_epi8(W3, W2, 4)), W3)

/* One compression of a 64-byte chunk on two lanes; m*_a/m*_b are the chunk's words. */
NI_TARGET static inline void ni_compress2(__m128i *abef_a, __m128i *cdgh_a, __m128i *abef_b, __m128i *cdgh_b,
                                          __m128i m0a, __m128i m1a, __m128i m2a, __m128i m3a,
                                          __m128i m0b, __m128i m1b, __m128i m2b, __m128i m3b) {
    __m128i s0a = *abef_a, s1a = *cdgh_a, s0b = *abef_b, s1b = *cdgh_b;
    const __m128i *k = (const __m128i *)K;
    NI_ROUNDS2(m0a, m0b, _mm_loadu_si128(k + 0));
    NI_ROUNDS2(m1a, m1b, _mm_loadu_si128(k + 1));
    NI_ROUNDS2(m2a, m2b, _mm_loadu_si128(k + 2));
    NI_ROUNDS2(m3a, m3b, _mm_loadu_si128(k + 3));
    for (int i = 4; i < 16; i++) {
        __m128i na = NI_SCHEDULE(m0a, m1a, m2a, m3a);
        __m128i nb = NI_SCHEDULE(m0b, m1b, m2b, m3b);
        m0a = m1a; m1a = m2a; m2a = m3a; m3a = na;
        m0b = m1b; m1b = m2b; m2b = m3b; m3b = nb;
        NI_ROUNDS2(m3a, m3b, _mm_loadu_si128(k + i));
    }
    *abef_a = _mm_add_epi32(*abef_a, s0a);
    *cdgh_a = _mm_add_epi32(*cdgh_a, s1a);
    *abef_b = _mm_add_epi32(*abef_b, s0b);
    *cdgh_b = _mm_add_epi32(*cdgh_b, s1b);
}

NI_TARGET static inline __m128i ni_load_words(const uint8_t *p) {
    const __m128i big_endian = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    return _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), big_endian);
}

NI_TARGET static void search_sha_ni(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    uint8_t tail_a[128], tail_b[128];
    memcpy(tail_a, job->tail, sizeof tail_a);
    memcpy(tail_b, job->tail, sizeof tail_b);
    __m128i mid_abef, mid_cdgh, iv_abef, iv_cdgh;
    ni_pack(job->midstate, &mid_abef, &mid_cdgh);
    ni_pack(IV, &iv_abef, &iv_cdgh);
    const __m128i pad2 = _mm_set_epi32(0, 0, 0, (int)0x80000000u);
    const __m128i pad3 = _mm_set_epi32(256, 0, 0, 0);
    uint64_t nonce = start;
    for (; end - nonce >= 2; nonce += 2) { /* not nonce + 1 < end: that wraps at 2^64 - 1 */
        progress(nonce, start);
        put_nonce(tail_a, job, nonce);
        put_nonce(tail_b, job, nonce + 1);
        __m128i abef_a = mid_abef, cdgh_a = mid_cdgh, abef_b = mid_abef, cdgh_b = mid_cdgh;
        for (int c = 0; c < job->tail_chunks; c++) {
            const uint8_t *pa = tail_a + 64 * c, *pb = tail_b + 64 * c;
            ni_compress2(&abef_a, &cdgh_a, &abef_b, &cdgh_b,
                         ni_load_words(pa), ni_load_words(pa + 16), ni_load_words(pa + 32), ni_load_words(pa + 48),
                         ni_load_words(pb), ni_load_words(pb + 16), ni_load_words(pb + 32), ni_load_words(pb + 48));
        }
        /* The first digest's words are the second message's first eight words. */
        __m128i w0a, w1a, w0b, w1b;
        ni_unpack(abef_a, cdgh_a, &w0a, &w1a);
        ni_unpack(abef_b, cdgh_b, &w0b, &w1b);
        __m128i h_abef_a = iv_abef, h_cdgh_a = iv_cdgh, h_abef_b = iv_abef, h_cdgh_b = iv_cdgh;
        ni_compress2(&h_abef_a, &h_cdgh_a, &h_abef_b, &h_cdgh_b, w0a, w1a, pad2, pad3, w0b, w1b, pad2, pad3);
        /* Word 0 (A) sits in lane 3 of ABEF: most nonces stop here. */
        uint32_t first_a = (uint32_t)_mm_extract_epi32(h_abef_a, 3);
        uint32_t first_b = (uint32_t)_mm_extract_epi32(h_abef_b, 3);
        if (first_a > job->first_word_limit && first_b > job->first_word_limit) continue;
        uint32_t hash_a[8], hash_b[8];
        __m128i dcba, hgfe;
        ni_unpack(h_abef_a, h_cdgh_a, &dcba, &hgfe);
        _mm_storeu_si128((__m128i *)hash_a, dcba);
        _mm_storeu_si128((__m128i *)(hash_a + 4), hgfe);
        ni_unpack(h_abef_b, h_cdgh_b, &dcba, &hgfe);
        _mm_storeu_si128((__m128i *)hash_b, dcba);
        _mm_storeu_si128((__m128i *)(hash_b + 4), hgfe);
        if (settle_pair(job, hash_a, hash_b, nonce, start, out)) return;
    }
    finish_odd(job, start, nonce, end, out);
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

#define ARM_ROUNDS2(W_A, W_B, kk)                                         \
    do {                                                                  \
        uint32x4_t ta = vaddq_u32(W_A, kk), tb = vaddq_u32(W_B, kk);      \
        uint32x4_t pa = sa0, pb = sb0;                                    \
        sa0 = vsha256hq_u32(sa0, sa1, ta);                                \
        sb0 = vsha256hq_u32(sb0, sb1, tb);                                \
        sa1 = vsha256h2q_u32(sa1, pa, ta);                                \
        sb1 = vsha256h2q_u32(sb1, pb, tb);                                \
    } while (0)

ARM_TARGET static inline void arm_compress2(uint32x4_t *abcd_a, uint32x4_t *efgh_a, uint32x4_t *abcd_b, uint32x4_t *efgh_b,
                                            uint32x4_t m0a, uint32x4_t m1a, uint32x4_t m2a, uint32x4_t m3a,
                                            uint32x4_t m0b, uint32x4_t m1b, uint32x4_t m2b, uint32x4_t m3b) {
    uint32x4_t sa0 = *abcd_a, sa1 = *efgh_a, sb0 = *abcd_b, sb1 = *efgh_b;
    ARM_ROUNDS2(m0a, m0b, vld1q_u32(K + 0));
    ARM_ROUNDS2(m1a, m1b, vld1q_u32(K + 4));
    ARM_ROUNDS2(m2a, m2b, vld1q_u32(K + 8));
    ARM_ROUNDS2(m3a, m3b, vld1q_u32(K + 12));
    for (int i = 4; i < 16; i++) {
        uint32x4_t na = vsha256su1q_u32(vsha256su0q_u32(m0a, m1a), m2a, m3a);
        uint32x4_t nb = vsha256su1q_u32(vsha256su0q_u32(m0b, m1b), m2b, m3b);
        m0a = m1a; m1a = m2a; m2a = m3a; m3a = na;
        m0b = m1b; m1b = m2b; m2b = m3b; m3b = nb;
        ARM_ROUNDS2(m3a, m3b, vld1q_u32(K + 4 * i));
    }
    *abcd_a = vaddq_u32(*abcd_a, sa0);
    *efgh_a = vaddq_u32(*efgh_a, sa1);
    *abcd_b = vaddq_u32(*abcd_b, sb0);
    *efgh_b = vaddq_u32(*efgh_b, sb1);
}

ARM_TARGET static inline uint32x4_t arm_load_words(const uint8_t *p) {
    return vreinterpretq_u32_u8(vrev32q_u8(vld1q_u8(p)));
}

ARM_TARGET static void search_armv8(const job_t *job, uint64_t start, uint64_t end, result_t *out) {
    uint8_t tail_a[128], tail_b[128];
    memcpy(tail_a, job->tail, sizeof tail_a);
    memcpy(tail_b, job->tail, sizeof tail_b);
    const uint32x4_t mid0 = vld1q_u32(job->midstate), mid1 = vld1q_u32(job->midstate + 4);
    const uint32x4_t iv0 = vld1q_u32(IV), iv1 = vld1q_u32(IV + 4);
    const uint32_t pad2_words[4] = {0x80000000u, 0, 0, 0}, pad3_words[4] = {0, 0, 0, 256};
    const uint32x4_t pad2 = vld1q_u32(pad2_words), pad3 = vld1q_u32(pad3_words);
    uint64_t nonce = start;
    for (; end - nonce >= 2; nonce += 2) { /* not nonce + 1 < end: that wraps at 2^64 - 1 */
        progress(nonce, start);
        put_nonce(tail_a, job, nonce);
        put_nonce(tail_b, job, nonce + 1);
        uint32x4_t a0 = mid0, a1 = mid1, b0 = mid0, b1 = mid1;
        for (int c = 0; c < job->tail_chunks; c++) {
            const uint8_t *pa = tail_a + 64 * c, *pb = tail_b + 64 * c;
            arm_compress2(&a0, &a1, &b0, &b1,
                          arm_load_words(pa), arm_load_words(pa + 16), arm_load_words(pa + 32), arm_load_words(pa + 48),
                          arm_load_words(pb), arm_load_words(pb + 16), arm_load_words(pb + 32), arm_load_words(pb + 48));
        }
        uint32x4_t ha0 = iv0, ha1 = iv1, hb0 = iv0, hb1 = iv1;
        arm_compress2(&ha0, &ha1, &hb0, &hb1, a0, a1, pad2, pad3, b0, b1, pad2, pad3);
        uint32_t first_a = vgetq_lane_u32(ha0, 0), first_b = vgetq_lane_u32(hb0, 0);
        if (first_a > job->first_word_limit && first_b > job->first_word_limit) continue;
        uint32_t hash_a[8], hash_b[8];
        vst1q_u32(hash_a, ha0);
        vst1q_u32(hash_a + 4, ha1);
        vst1q_u32(hash_b, hb0);
        vst1q_u32(hash_b + 4, hb1);
        if (settle_pair(job, hash_a, hash_b, nonce, start, out)) return;
    }
    finish_odd(job, start, nonce, end, out);
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
    progress_job_id = id;
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
