/* UTF-8 decoding with llama.cpp's rules, category look-ups, GPT-2's byte alphabet. */
#include "unicode.h"

#include <string.h>

static int in_ranges(const ek_cp_range *r, int n, uint32_t cp) {
    int lo = 0, hi = n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < r[mid].lo) hi = mid - 1;
        else if (cp > r[mid].hi) lo = mid + 1;
        else return 1;
    }
    return 0;
}

int ek_cp_is_letter(uint32_t cp) {
    if (cp < 128) return (cp | 32) - 'a' < 26;
    return in_ranges(ek_ucd_letter, ek_ucd_letter_n, cp);
}

int ek_cp_is_number(uint32_t cp) {
    if (cp < 128) return cp - '0' < 10;
    return in_ranges(ek_ucd_number, ek_ucd_number_n, cp);
}

int ek_cp_is_space(uint32_t cp) {
    /* Unicode's White_Space property (what \s means in the regex engines tokenizers use). */
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

int ek_utf8_len(uint8_t lead) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

uint32_t ek_utf8_next(const uint8_t *s, size_t n, size_t *pos) {
    size_t i = *pos;
    uint8_t c = s[i];
    int len = c < 0x80 ? 1 : !(c & 0x40) ? 0 : !(c & 0x20) ? 2 : !(c & 0x10) ? 3 : !(c & 0x08) ? 4 : 0;
    if (len == 1) {
        *pos = i + 1;
        return c;
    }
    if (len == 0 || i + (size_t)len > n) goto bad;
    uint32_t cp = c & (0x7F >> len);
    for (int k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80) goto bad;
        cp = cp << 6 | (s[i + k] & 0x3F);
    }
    *pos = i + (size_t)len;
    return cp;
bad:
    *pos = i + 1;
    return 0xFFFD;
}

int ek_utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t ek_utf8_sanitize(const char *s, size_t n, int flush, char *out, size_t *out_n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, m = 0;
    while (i < n) {
        uint8_t c = u[i];
        if (c < 0x80) {
            out[m++] = (char)c;
            i++;
            continue;
        }
        /* the sequence length and the range of its second byte (Unicode's table of well-formed UTF-8) */
        int len = 0;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) len = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4) len = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        size_t k = 1;
        while (len && k < (size_t)len && i + k < n && u[i + k] >= (k == 1 ? lo : 0x80) && u[i + k] <= (k == 1 ? hi : 0xBF))
            k++;
        if (len && k == (size_t)len) {
            memcpy(out + m, s + i, k);
            m += k;
        } else if (len && i + k == n && !flush) {
            break; /* cut off: wait for the rest */
        } else {
            memcpy(out + m, "\xef\xbf\xbd", 3); /* U+FFFD for the maximal subpart */
            m += 3;
        }
        i += k;
    }
    *out_n = m;
    return i;
}

/* Printable bytes stand for themselves; the other 68 map to U+0100.. in byte order (GPT-2's table). */
static int byte_is_printable(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE; }

uint32_t ek_byte_to_cp(uint8_t b) {
    if (byte_is_printable(b)) return b;
    uint32_t k = 0;
    for (int x = 0; x < b; x++) k += !byte_is_printable(x);
    return 0x100 + k;
}

int ek_cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return byte_is_printable((int)cp) ? (int)cp : -1;
    uint32_t k = 0;
    for (int b = 0; b < 256; b++) {
        if (byte_is_printable(b)) continue;
        if (0x100 + k == cp) return b;
        k++;
    }
    return -1;
}
