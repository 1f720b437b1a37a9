/* DES and TDES for keys used once: the DUKPT derivations and the X9.19 retail MAC of a
 * transaction's key (hsm_mock/crypto.py, `tdes_ecb_encrypt_once`, `tdes_ecb_decrypt_once`,
 * `retail_mac_once`), in the HSM and in the fleet's terminals.
 *
 * Why: a key used once costs a cipher context in `cryptography` (OpenSSL's EVP set-up, ≈ 1.4 µs
 * through the Rust binding) for one or two blocks; a MAC takes two. Here a key schedule and a
 * block are a few hundred table look-ups, done in one call from Python
 * (docs/performance.md, "DES for keys used once, in C").
 *
 * The optional build (setup.py) compiles this file; without a compiler, or with
 * EUM_PURE_PYTHON=1, hsm_mock/crypto.py uses `cryptography` instead, which stays the reference:
 * tests/test_des_c.py checks FIPS 46-3 / SP 800-67 vectors and compares both over random keys.
 *
 * Written from the standard (FIPS PUB 46-3, the tables below; bits numbered 1..64 from the most
 * significant bit of the first byte). Every permutation is table-driven: the tables of byte
 * look-ups are built once at import from the standard's bit tables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static const uint8_t IP[64] = {
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4,
    62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8,
    57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3,
    61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7};
static const uint8_t FP[64] = {
    40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31,
    38, 6, 46, 14, 54, 22, 62, 30, 37, 5, 45, 13, 53, 21, 61, 29,
    36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27,
    34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25};
static const uint8_t P[32] = {
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10,
    2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25};
static const uint8_t PC1[56] = {
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18,
    10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36,
    63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22,
    14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4};
static const uint8_t PC2[48] = {
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10,
    23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2,
    41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48,
    44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32};
static const uint8_t SHIFTS[16] = {1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1};
static const uint8_t S[8][64] = {
    {14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7,
     0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8,
     4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0,
     15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13},
    {15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10,
     3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5,
     0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15,
     13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9},
    {10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8,
     13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1,
     13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7,
     1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12},
    {7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15,
     13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9,
     10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4,
     3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14},
    {2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9,
     14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6,
     4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14,
     11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3},
    {12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11,
     10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8,
     9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6,
     4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13},
    {4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1,
     13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6,
     1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2,
     6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12},
    {13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7,
     1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2,
     7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8,
     2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11}};

/* A bit permutation of an n-bit input (n a multiple of 8, bit 1 = the most significant) done as
 * n/8 byte look-ups: bytes[b][v] is the output bits the input's byte b contributes when it is v. */
/* The block state between the initial and the final permutation is kept with each 32-bit half
 * rotated right by 3 bits. In a half rotated so, the Feistel function's eight 6-bit inputs
 * E(R) ⊕ K sit at whole-byte shifts with no wrap-around: S-boxes 1, 3, 5, 7 (the standard's
 * numbering) at bits 24, 16, 8, 0 of R itself, S-boxes 2, 4, 6, 8 at bits 16, 8, 0, 24 of R
 * rotated right by 4 more; so a round is two XORs with the round key's two words, one rotation
 * and eight look-ups, with no expansion built (the layout of the classic table-driven DES
 * implementations, derived here from the standard's tables). The rotation is folded into the
 * tables: `ip_bytes` give IP's output already rotated, `fp_bytes` read a rotated input, the
 * S-P tables' outputs are rotated (docs/performance.md, "The DES core in rotated halves
 * (kept)"). IP and FP are bit permutations, so they commute with XOR: a CBC chain stays in the
 * rotated, permuted form from block to block (IP of each data block, FP once at the end). */
static uint64_t ip_bytes[8][256], fp_bytes[8][256], pc1_bytes[8][256];
/* PC2's byte look-ups (seven of the 56-bit C|D) with their output already split into a round
 * key's two words where a round reads them: the first word's groups in the high 32 bits, the
 * second's in the low ones, so a round key is seven look-ups. */
static uint64_t pc2_words[7][256];
static uint32_t sp[8][64]; /* S-box i's output for a 6-bit input, then P, rotated right by 3 */

static inline uint32_t rotr32(uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static void build_bytes(uint64_t (*bytes)[256], const uint8_t *table, int out_bits, int in_bits)
{
    for (int b = 0; b < in_bits / 8; b++) {
        for (int v = 0; v < 256; v++) {
            uint64_t out = 0;
            for (int i = 0; i < out_bits; i++) {
                int src = table[i] - 1; /* 0-based input bit, from the most significant */
                if (src / 8 == b && (v >> (7 - src % 8)) & 1)
                    out |= (uint64_t)1 << (out_bits - 1 - i);
            }
            bytes[b][v] = out;
        }
    }
}

/* A 64-bit permutation: eight byte look-ups. */
static inline uint64_t permute(uint64_t (*bytes)[256], uint64_t in)
{
    return bytes[0][in >> 56] | bytes[1][(in >> 48) & 0xFF] | bytes[2][(in >> 40) & 0xFF]
         | bytes[3][(in >> 32) & 0xFF] | bytes[4][(in >> 24) & 0xFF] | bytes[5][(in >> 16) & 0xFF]
         | bytes[6][(in >> 8) & 0xFF] | bytes[7][in & 0xFF];
}

/* Where a round reads the 6-bit key group g (0-based; S-box g+1) in its word: even groups in
 * the first word at bits 24, 16, 8, 0, odd ones in the second at bits 16, 8, 0, 24. */
static int group_shift(int g)
{
    return g % 2 == 0 ? 24 - 4 * g : (20 - 4 * g) & 31;
}

static void build_tables(void)
{
    /* IP with each output half rotated right by 3: output bit j of a half is the unrotated
     * half's bit j - 3; FP reading such a half: the unrotated bit k is at k + 3 */
    uint8_t ip_rot[64], fp_rot[64];
    for (int i = 0; i < 64; i++) {
        int half = i / 32 * 32, j = i % 32;
        ip_rot[i] = IP[half + (j + 29) % 32];
        int k = FP[i] - 1;
        fp_rot[i] = (uint8_t)(k / 32 * 32 + (k % 32 + 3) % 32 + 1);
    }
    build_bytes(ip_bytes, ip_rot, 64, 64);
    build_bytes(fp_bytes, fp_rot, 64, 64);
    build_bytes(pc1_bytes, PC1, 56, 64);
    uint64_t pc2_bytes[7][256];
    build_bytes(pc2_bytes, PC2, 48, 56);
    for (int b = 0; b < 7; b++) {  /* the groups are bit fields: splitting each look-up splits their OR */
        for (int v = 0; v < 256; v++) {
            uint64_t first = 0, second = 0;
            for (int g = 0; g < 8; g++) {
                uint64_t group = ((pc2_bytes[b][v] >> (42 - 6 * g)) & 0x3F) << group_shift(g);
                if (g % 2 == 0)
                    first |= group;
                else
                    second |= group;
            }
            pc2_words[b][v] = (first << 32) | second;
        }
    }
    for (int i = 0; i < 8; i++) {
        for (int v = 0; v < 64; v++) {
            int row = ((v >> 4) & 2) | (v & 1), col = (v >> 1) & 0xF;
            uint32_t s = (uint32_t)S[i][row * 16 + col] << (28 - 4 * i); /* bits 4i+1 .. 4i+4 */
            uint32_t out = 0;
            for (int j = 0; j < 32; j++)
                if ((s >> (32 - P[j])) & 1)
                    out |= (uint32_t)1 << (31 - j);
            sp[i][v] = rotr32(out, 3);
        }
    }
}

/* Each round's 48-bit key as two 32-bit words: the even S-box groups where `ROUND` XORs them
 * with the rotated R, the odd ones where it XORs them with R rotated by 4 more (neighbouring
 * groups overlap by two bits in E(R), so they cannot share a word). */
typedef struct { uint32_t first[16], second[16]; } schedule;

/* Key schedules are key material: cleared before their stack frame is left. A memset of memory
 * about to go out of scope is a dead store the compiler may drop: the empty asm that "reads" the
 * memory after it keeps it (GCC, Clang); elsewhere a volatile pointer does, a byte at a time. */
static void clear(void *p, size_t n)
{
#if defined(__GNUC__)
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
#else
    volatile uint8_t *v = p;
    while (n--)
        *v++ = 0;
#endif
}

static void key_schedule(uint64_t key, schedule *ks)
{
    uint64_t cd = permute(pc1_bytes, key); /* 56 bits: C (28) then D (28) */
    uint32_t c = (uint32_t)(cd >> 28) & 0xFFFFFFF, d = (uint32_t)cd & 0xFFFFFFF;
    for (int r = 0; r < 16; r++) {
        int s = SHIFTS[r];
        c = ((c << s) | (c >> (28 - s))) & 0xFFFFFFF;
        d = ((d << s) | (d >> (28 - s))) & 0xFFFFFFF;
        uint64_t cd = ((uint64_t)c << 28) | d;
        uint64_t words = pc2_words[0][cd >> 48] | pc2_words[1][(cd >> 40) & 0xFF] | pc2_words[2][(cd >> 32) & 0xFF]
                       | pc2_words[3][(cd >> 24) & 0xFF] | pc2_words[4][(cd >> 16) & 0xFF]
                       | pc2_words[5][(cd >> 8) & 0xFF] | pc2_words[6][cd & 0xFF];
        ks->first[r] = (uint32_t)(words >> 32);
        ks->second[r] = (uint32_t)words;
    }
}

/* One round on rotated halves: l ^= f(r, round key i). */
#define ROUND(l, r, ks, i)                                                                          \
    do {                                                                                            \
        uint32_t t_ = (r) ^ (ks)->first[i], u_ = rotr32((r), 4) ^ (ks)->second[i];                 \
        (l) ^= sp[0][t_ >> 24 & 0x3F] ^ sp[2][t_ >> 16 & 0x3F] ^ sp[4][t_ >> 8 & 0x3F] ^ sp[6][t_ & 0x3F] \
             ^ sp[1][u_ >> 16 & 0x3F] ^ sp[3][u_ >> 8 & 0x3F] ^ sp[5][u_ & 0x3F] ^ sp[7][u_ >> 24 & 0x3F]; \
    } while (0)

/* The sixteen rounds of a block already through IP (rotated halves in, the pre-FP block out:
 * the last round's halves are not swapped). Two rounds a step, without swapping the halves:
 * after rounds 2i+1 and 2i+2, l and r are L(2i+2) and R(2i+2) as the standard's loop leaves them. */
static uint64_t rounds(uint64_t lr, const schedule *ks, int decrypt)
{
    uint32_t l = (uint32_t)(lr >> 32), r = (uint32_t)lr;
    if (decrypt) {
        for (int i = 15; i > 0; i -= 2) {
            ROUND(l, r, ks, i);
            ROUND(r, l, ks, i - 1);
        }
    } else {
        for (int i = 0; i < 16; i += 2) {
            ROUND(l, r, ks, i);
            ROUND(r, l, ks, i + 1);
        }
    }
    return ((uint64_t)r << 32) | l;
}

static uint64_t des_block(uint64_t block, const schedule *ks, int decrypt)
{
    return permute(fp_bytes, rounds(permute(ip_bytes, block), ks, decrypt));
}

static uint64_t load(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap64(v);
#elif defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return v;
#else
    v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
#endif
}

static void store(uint64_t v, uint8_t *p)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* ecb(key, data, decrypt) -> bytes: TDES-EDE (or its inverse) of block-aligned data under a
 * 24-byte key K1|K2|K3 (hsm_mock/crypto.py expands 8- and 16-byte keys first). */
static PyObject *des_ecb(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer key, data;
    int decrypt;
    if (!PyArg_ParseTuple(args, "y*y*p", &key, &data, &decrypt))
        return NULL;
    PyObject *result = NULL;
    if (key.len != 24) {
        PyErr_Format(PyExc_ValueError, "TDES key must be 24 bytes here, got %zd", key.len);
        goto done;
    }
    if (data.len % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "TDES data must be a multiple of 8 bytes, got %zd", data.len);
        goto done;
    }
    schedule ks[3];
    const uint8_t *k = key.buf;
    int single = memcmp(k, k + 8, 8) == 0 && memcmp(k, k + 16, 8) == 0; /* K|K|K: EDE is one DES */
    key_schedule(load(k), &ks[0]); /* K|K|K (a DUKPT register's halves): the block loop uses ks[0] alone */
    if (!single) {
        key_schedule(load(k + 8), &ks[1]);
        if (memcmp(k, k + 16, 8) == 0) /* K1|K2|K1, the 2-key TDES of every DUKPT key */
            ks[2] = ks[0];
        else
            key_schedule(load(k + 16), &ks[2]);
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result == NULL)
        goto done;
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    const uint8_t *in = data.buf;
    for (Py_ssize_t at = 0; at < data.len; at += 8) {
        uint64_t b = permute(ip_bytes, load(in + at)); /* FP then IP between the three passes cancel */
        if (single)
            b = rounds(b, &ks[0], decrypt);
        else if (decrypt)
            b = rounds(rounds(rounds(b, &ks[2], 1), &ks[1], 0), &ks[0], 1);
        else
            b = rounds(rounds(rounds(b, &ks[0], 0), &ks[1], 1), &ks[2], 0);
        store(permute(fp_bytes, b), out + at);
    }
    clear(ks, sizeof ks);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

/* retail_mac(key, padded) -> bytes: ISO/IEC 9797-1 MAC algorithm 3 (X9.19) of already padded
 * data under a 16-byte key K|K': single-DES CBC under K with a zero IV, then the last block
 * decrypted under K' and encrypted under K. The full 8-byte MAC. */
static PyObject *des_retail_mac(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer key, data;
    if (!PyArg_ParseTuple(args, "y*y*", &key, &data))
        return NULL;
    PyObject *result = NULL;
    if (key.len != 16) {
        PyErr_Format(PyExc_ValueError, "retail MAC key must be 16 bytes, got %zd", key.len);
        goto done;
    }
    if (data.len == 0 || data.len % 8 != 0) {
        PyErr_Format(PyExc_ValueError, "MAC data must be padded to a multiple of 8 bytes, got %zd", data.len);
        goto done;
    }
    schedule ks[2];
    key_schedule(load(key.buf), &ks[0]);
    key_schedule(load((const uint8_t *)key.buf + 8), &ks[1]);
    const uint8_t *in = data.buf;
    /* the chain kept through IP (see `ip_bytes`): IP(c XOR m) = IP(c) XOR IP(m), and the next
     * block's IP undoes the last one's FP; FP once, of the MAC */
    uint64_t chained = 0;
    for (Py_ssize_t at = 0; at < data.len; at += 8)
        chained = rounds(chained ^ permute(ip_bytes, load(in + at)), &ks[0], 0);
    chained = permute(fp_bytes, rounds(rounds(chained, &ks[1], 1), &ks[0], 0));
    clear(ks, sizeof ks);
    uint8_t mac[8];
    store(chained, mac);
    result = PyBytes_FromStringAndSize((const char *)mac, 8);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return result;
}

/* The argument check of the METH_FASTCALL functions below: exactly two bytes objects (the
 * compiled callers pass nothing else), else a TypeError naming the call. */
static int two_bytes(PyObject *const *args, Py_ssize_t nargs, const char *call)
{
    if (nargs == 2 && PyBytes_CheckExact(args[0]) && PyBytes_CheckExact(args[1]))
        return 1;
    PyErr_Format(PyExc_TypeError, "%s takes two bytes objects", call);
    return 0;
}

/* a XOR b, two bytes objects of one length: a DUKPT key and its variant mask, a register and
 * a key half, a PIN field and a PAN field. hsm_mock/crypto.py's `xor` turned both into Python
 * ints and back, three method calls a block through compiled code's generic call (≈ 3,000
 * instructions; docs/performance.md, "The HSM's XOR and DUKPT step in C (kept)"). No intermediate
 * copy is made: the only bytes written are the result's. */
static PyObject *des_xor(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!two_bytes(args, nargs, "xor(a, b)"))
        return NULL;
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    if (PyBytes_GET_SIZE(args[1]) != n) {
        PyErr_Format(PyExc_ValueError, "xor operands differ in length (%zd vs %zd bytes)", n,
                     PyBytes_GET_SIZE(args[1]));
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, n);
    if (result == NULL)
        return NULL;
    const uint8_t *a = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    const uint8_t *b = (const uint8_t *)PyBytes_AS_STRING(args[1]);
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
    for (Py_ssize_t i = 0; i < n; i++)
        out[i] = a[i] ^ b[i];
    return result;
}

/* future_key(key, register) -> bytes: ANSI X9.24-1:2009 non-reversible key generation, the
 * step of the TDES DUKPT derivation that turns a 16-byte key and a 64-bit KSN register into the
 * next key of the path: each half is DES_L(register XOR R) XOR R under the key's halves L|R, the
 * right half from the key, the left from the key XOR C0C0C0C000000000C0C0C0C000000000.
 * hsm_mock/dukpt.py's `_nonreversible_key` is the reference (tests/test_des_c.py compares them;
 * the X9.24 vectors of tests/test_hsm_crypto.py run on this path). */
static PyObject *des_future_key(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (!two_bytes(args, nargs, "future_key(key, register)"))
        return NULL;
    if (PyBytes_GET_SIZE(args[0]) != 16 || PyBytes_GET_SIZE(args[1]) != 8) {
        PyErr_Format(PyExc_ValueError, "future_key takes a 16-byte key and an 8-byte register, got %zd and %zd",
                     PyBytes_GET_SIZE(args[0]), PyBytes_GET_SIZE(args[1]));
        return NULL;
    }
    const uint8_t *key = (const uint8_t *)PyBytes_AS_STRING(args[0]);
    uint64_t reg = load((const uint8_t *)PyBytes_AS_STRING(args[1]));
    const uint64_t mask = 0xC0C0C0C000000000ULL;
    uint64_t left = load(key), right = load(key + 8);
    uint64_t left_m = left ^ mask, right_m = right ^ mask;
    uint8_t out[16];
    schedule ks;
    key_schedule(left, &ks);
    uint64_t new_right = des_block(reg ^ right, &ks, 0) ^ right;
    key_schedule(left_m, &ks);
    uint64_t new_left = des_block(reg ^ right_m, &ks, 0) ^ right_m;
    store(new_left, out);
    store(new_right, out + 8);
    PyObject *result = PyBytes_FromStringAndSize((const char *)out, 16);
    clear(&ks, sizeof ks); /* key material: cleared before the frame is left */
    clear(out, sizeof out);
    left = right = left_m = right_m = new_left = new_right = 0;
    return result;
}

static PyMethodDef methods[] = {
    {"future_key", (PyCFunction)(void (*)(void))des_future_key, METH_FASTCALL,
     "future_key(key16, register8) -> the X9.24-1 non-reversible key generation (16 bytes)"},
    {"ecb", des_ecb, METH_VARARGS, "ecb(key24, data, decrypt) -> TDES-EDE ECB of block-aligned data"},
    {"retail_mac", des_retail_mac, METH_VARARGS, "retail_mac(key16, padded) -> the X9.19 MAC (8 bytes)"},
    {"xor", (PyCFunction)(void (*)(void))des_xor, METH_FASTCALL, "xor(a, b) -> a XOR b (bytes of one length)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "hsm_mock._des",
    .m_doc = "DES and TDES for keys used once (see the file's head).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__des(void)
{
    build_tables();
    return PyModule_Create(&module);
}
