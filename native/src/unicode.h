/* UTF-8 and the few Unicode properties the tokenizer's pre-tokenizers need. Internal. */
#ifndef EDGEKIT_UNICODE_H
#define EDGEKIT_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit_test.h"

/* Internal to the library: not exported from the shared library (edgekit.map lists what is). */
#if defined(__GNUC__) || defined(__clang__)
#define EK_HIDDEN __attribute__((visibility("hidden")))
#else
#define EK_HIDDEN
#endif

typedef struct {
    uint32_t lo, hi;
} ek_cp_range;

/* Generated tables (unicode_tables.c, by native/tools/gen_unicode.py): sorted, disjoint ranges. */
EK_HIDDEN extern const ek_cp_range ek_ucd_letter[];
EK_HIDDEN extern const int ek_ucd_letter_n;
EK_HIDDEN extern const ek_cp_range ek_ucd_number[];
EK_HIDDEN extern const int ek_ucd_number_n;

EK_HIDDEN int ek_cp_is_letter(uint32_t cp); /* \p{L} */
EK_HIDDEN int ek_cp_is_number(uint32_t cp); /* \p{N} */
EK_HIDDEN int ek_cp_is_space(uint32_t cp);  /* \s: Unicode White_Space */

/* Bytes of the UTF-8 sequence a lead byte starts, from its high nibble (1 for stray continuation bytes). */
EK_HIDDEN int ek_utf8_len(uint8_t lead);

/* Decode one code point at s[*pos] (n bytes in all) as llama.cpp does: a sequence is taken from the
 * lead byte's bit pattern with its continuation bytes checked, and anything invalid becomes U+FFFD
 * consuming one byte. Advances *pos. */
EK_HIDDEN uint32_t ek_utf8_next(const uint8_t *s, size_t n, size_t *pos);

/* Write cp as UTF-8 into out (4 bytes room); returns the byte count. */
EK_HIDDEN int ek_utf8_put(uint32_t cp, char *out);

/* ek_utf8_sanitize (exported for the tests) is declared in include/edgekit_test.h. */

/* GPT-2's byte-level alphabet: each byte as a printable code point, and back (-1: not in the alphabet). */
EK_HIDDEN uint32_t ek_byte_to_cp(uint8_t b);
EK_HIDDEN int ek_cp_to_byte(uint32_t cp);

#endif
