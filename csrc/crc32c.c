/*
 * crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78).
 *
 * Uses the CPU's CRC instructions where the build target and the running
 * CPU have them (SSE4.2 on x86-64, the CRC extension on AArch64) and an
 * eight-table software loop otherwise.  All paths give identical results.
 */
#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "dpdpu.h"

#define CRC32C_POLY 0x82F63B78u

static uint32_t sw_table[8][256];
static pthread_once_t sw_once = PTHREAD_ONCE_INIT;

static void sw_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++)
            c = (c & 1u) ? (c >> 1) ^ CRC32C_POLY : c >> 1;
        sw_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = sw_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = sw_table[0][c & 0xffu] ^ (c >> 8);
            sw_table[k][n] = c;
        }
    }
}

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof(v));
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static uint32_t crc32c_sw(uint32_t c, const uint8_t *p, uint64_t len)
{
    pthread_once(&sw_once, sw_init);
    while (len >= 8) {
        uint64_t w = load_le64(p) ^ c;
        c = sw_table[7][w & 0xff] ^ sw_table[6][(w >> 8) & 0xff] ^
            sw_table[5][(w >> 16) & 0xff] ^ sw_table[4][(w >> 24) & 0xff] ^
            sw_table[3][(w >> 32) & 0xff] ^ sw_table[2][(w >> 40) & 0xff] ^
            sw_table[1][(w >> 48) & 0xff] ^ sw_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        c = sw_table[0][(c ^ *p++) & 0xffu] ^ (c >> 8);
    return c;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DPDPU_HAVE_HW_CRC 1
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t c, const uint8_t *p,
                                                            uint64_t len)
{
    uint64_t c64 = c;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof(w));
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        len -= 8;
    }
    c = (uint32_t)c64;
    while (len--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}

static int hw_available(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2");
}
#elif defined(__aarch64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#define DPDPU_HAVE_HW_CRC 1
__attribute__((target("+crc"))) static uint32_t crc32c_hw(uint32_t c, const uint8_t *p,
                                                          uint64_t len)
{
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, sizeof(w));
        c = __builtin_aarch64_crc32cx(c, w);
        p += 8;
        len -= 8;
    }
    while (len--)
        c = __builtin_aarch64_crc32cb(c, *p++);
    return c;
}

static int hw_available(void)
{
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
}
#endif

#ifdef DPDPU_HAVE_HW_CRC
static int hw; /* written once, under hw_once */

static void hw_init(void)
{
    hw = hw_available();
}
#endif

uint32_t dpdpu_crc32c(uint32_t crc, const void *data, uint64_t len)
{
    const uint8_t *p = data;
    uint32_t c = ~crc;

    if (len == 0)
        return crc;
#ifdef DPDPU_HAVE_HW_CRC
    /* Workers make their first call at the same moment: ask the CPU once. */
    static pthread_once_t hw_once = PTHREAD_ONCE_INIT;
    pthread_once(&hw_once, hw_init);
    if (hw)
        return ~crc32c_hw(c, p, len);
#endif
    return ~crc32c_sw(c, p, len);
}
