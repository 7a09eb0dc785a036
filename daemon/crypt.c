/*
 * Encryption at rest (daemon/crypt.h): the key ring and the envelope.
 *
 * HOW IT WORKS
 *
 * The key file is read at start (and by --check, and again on SIGHUP: khala__crypt_reload()
 * loads a whole new ring and swaps the keys in only when it passed every check): opened, then
 * checked on the open descriptor (fstat), so that what is checked is what is read. Every key goes into one array
 * in memory locked against swapping where RLIMIT_MEMLOCK allows (sodium_mlock; a failure is
 * not an error, since a host without locked memory should still start), zeroed on close.
 *
 * Sealing, for one value:
 *
 *   1. header = magic 0xC1 'K' 'C' 'E', the current key id (big-endian);
 *   2. nonce = 24 random bytes (randombytes_buf): XChaCha20's nonce is long enough that random
 *      nonces never repeat in practice, so no counter has to survive restarts or be shared
 *      between hosts that share a Redis;
 *   3. ad = header | type (u32 big-endian) | cache key;
 *   4. ciphertext | tag = crypto_aead_xchacha20poly1305_ietf_encrypt(value, ad, nonce, key).
 *
 * Opening checks the magic and the length, finds the key by id (unknown: refused), rebuilds
 * the associated data from the key and type the caller read it under (so a value copied to
 * another key or type fails its tag) and decrypts. Every refusal is counted.
 *
 * Why XChaCha20-Poly1305 rather than secretstream: each value is one message read on its own,
 * in any order, so a stream's ordering buys nothing; AES-GCM needs AES-NI to be fast and safe,
 * XChaCha20 does not.
 */
#include "crypt.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "debug.h"
#include "errbuf.h"
#include "khala/error.h"

#define MAGIC0 0xC1u
#define HEADER_BYTES 8u
#define NONCE_BYTES crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define TAG_BYTES crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KEY_BYTES crypto_aead_xchacha20poly1305_ietf_KEYBYTES
_Static_assert(HEADER_BYTES + NONCE_BYTES + TAG_BYTES == KHALA_CRYPT_OVERHEAD,
               "KHALA_CRYPT_OVERHEAD is the envelope's");
_Static_assert(KEY_BYTES == 32, "a key is 64 hex digits");

typedef struct crypt_key {
    uint32_t id;
    unsigned char key[KEY_BYTES];
} crypt_key_t;

struct khala_crypt {
    crypt_key_t *keys; /* nkeys entries, locked when possible; immutable after load */
    size_t nkeys;
    size_t current; /* index of the key new values use */
    uint32_t types; /* 1u << type for each sealed type */
    khala_crypt_stats_t st;
};

static void be32(unsigned char out[4], uint32_t v) {
    out[0] = (unsigned char)(v >> 24);
    out[1] = (unsigned char)(v >> 16);
    out[2] = (unsigned char)(v >> 8);
    out[3] = (unsigned char)v;
}

static uint32_t from_be32(const unsigned char in[4]) {
    return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

/* The file's bytes, NUL-terminated, after the checks of its type, owner and mode. */
static int read_key_file(const char *path, char **text, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        int e = errno;
        return khala__errbuf(err, errlen, -e, "[crypto] key_file %s: %s", path, strerror(e));
    }
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        khala__errbuf(err, errlen, rc, "[crypto] key_file %s: %s", path, strerror(-rc));
    } else if (!S_ISREG(st.st_mode)) {
        rc = khala__errbuf(err, errlen, KHALA_EDENIED, "[crypto] key_file %s: not a regular file",
                           path);
    } else if (st.st_uid != geteuid()) {
        rc = khala__errbuf(err, errlen, KHALA_EDENIED,
                           "[crypto] key_file %s: owned by uid %u, not by khalad's user (uid %u): "
                           "chown it to khalad's user",
                           path, (unsigned)st.st_uid, (unsigned)geteuid());
    } else if (st.st_mode & 077) {
        rc = khala__errbuf(err, errlen, KHALA_EDENIED,
                           "[crypto] key_file %s: mode %04o lets group or others at the keys: "
                           "chmod 600 it",
                           path, (unsigned)(st.st_mode & 07777));
    } else if (st.st_size > (off_t)KHALA_CRYPT_FILE_MAX) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                           "[crypto] key_file %s: %lld bytes, more than %u for a key file", path,
                           (long long)st.st_size, KHALA_CRYPT_FILE_MAX);
    }
    if (rc != 0) {
        close(fd);
        return rc;
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        return khala__errbuf(err, errlen, -ENOMEM, "[crypto] key_file %s: out of memory", path);
    }
    sodium_mlock(buf, cap); /* best effort: the text holds the keys too */
    while (n < cap - 1) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            khala__errbuf(err, errlen, rc, "[crypto] key_file %s: %s", path, strerror(-rc));
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (rc != 0) {
        sodium_munlock(buf, cap);
        free(buf);
        return rc;
    }
    *text = buf;
    return 0;
}

/* Parse one line "<id> <64 hex> [current]" into k; 1 when it is blank or a comment. */
static int parse_line(char *line, crypt_key_t *k, int *current, char *what, size_t wlen) {
    char *save = NULL;
    char *id = strtok_r(line, " \t\r", &save);
    if (!id || id[0] == '#')
        return 1;
    char *hex = strtok_r(NULL, " \t\r", &save);
    char *mark = strtok_r(NULL, " \t\r", &save);
    char *extra = strtok_r(NULL, " \t\r", &save);
    uint64_t v = 0;
    for (const char *p = id; *p; p++) {
        if (*p < '0' || *p > '9' || v > UINT32_MAX)
            return khala__errbuf(what, wlen, -1, "the key id is not a number from 1 to %u",
                                 UINT32_MAX);
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (v == 0 || v > UINT32_MAX)
        return khala__errbuf(what, wlen, -1, "the key id is not a number from 1 to %u", UINT32_MAX);
    size_t bin_len = 0;
    if (!hex || strlen(hex) != 2 * KEY_BYTES ||
        sodium_hex2bin(k->key, KEY_BYTES, hex, strlen(hex), NULL, &bin_len, NULL) != 0 ||
        bin_len != KEY_BYTES)
        return khala__errbuf(what, wlen, -1, "key %u is not %u hex digits", (unsigned)v,
                             2 * KEY_BYTES);
    if ((mark && strcmp(mark, "current") != 0) || extra)
        return khala__errbuf(what, wlen, -1,
                             "after key %u only the word 'current' may follow, found '%.16s'",
                             (unsigned)v, extra ? extra : mark);
    k->id = (uint32_t)v;
    *current = mark != NULL;
    return 0;
}

int khala__crypt_load(const char *path, uint32_t types, khala_crypt_t **out, char *err,
                      size_t errlen) {
    KHALA_ASSERT(path && out);
    if (sodium_init() < 0)
        return khala__errbuf(err, errlen, KHALA_ETIER, "libsodium could not start");
    char *text = NULL;
    int rc = read_key_file(path, &text, err, errlen);
    if (rc != 0)
        return rc;
    size_t text_cap = strlen(text) + 1;
    khala_crypt_t *c = calloc(1, sizeof(*c));
    crypt_key_t *keys = calloc(KHALA_CRYPT_KEYS_MAX, sizeof(*keys));
    if (!c || !keys) {
        rc = khala__errbuf(err, errlen, -ENOMEM, "[crypto] key_file %s: out of memory", path);
        goto fail;
    }
    sodium_mlock(keys, KHALA_CRYPT_KEYS_MAX * sizeof(*keys));
    c->keys = keys;
    int lineno = 0, ncurrent = 0;
    for (char *line = text, *next; line; line = next) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        next = nl ? nl + 1 : NULL;
        lineno++;
        char what[160];
        int cur = 0;
        if (c->nkeys == KHALA_CRYPT_KEYS_MAX) {
            rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                               "[crypto] key_file %s:%d: more than %d keys", path, lineno,
                               KHALA_CRYPT_KEYS_MAX);
            goto fail;
        }
        int prc = parse_line(line, &keys[c->nkeys], &cur, what, sizeof(what));
        if (prc == 1)
            continue;
        if (prc != 0) {
            rc = khala__errbuf(err, errlen, KHALA_ECONFIG, "[crypto] key_file %s:%d: %s", path,
                               lineno, what);
            goto fail;
        }
        for (size_t i = 0; i < c->nkeys; i++)
            if (keys[i].id == keys[c->nkeys].id) {
                rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                                   "[crypto] key_file %s:%d: key id %u is given twice", path,
                                   lineno, (unsigned)keys[i].id);
                goto fail;
            }
        if (cur && ncurrent++) {
            rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                               "[crypto] key_file %s:%d: a second key is marked current", path,
                               lineno);
            goto fail;
        }
        if (cur || !ncurrent)
            c->current = c->nkeys;
        c->nkeys++;
    }
    if (c->nkeys == 0) {
        rc = khala__errbuf(err, errlen, KHALA_ECONFIG,
                           "[crypto] key_file %s: holds no key (lines '<id> <64 hex digits>')",
                           path);
        goto fail;
    }
    c->types = types;
    sodium_memzero(text, text_cap);
    sodium_munlock(text, text_cap);
    free(text);
    *out = c;
    return 0;
fail:
    sodium_memzero(text, text_cap);
    sodium_munlock(text, text_cap);
    free(text);
    if (keys) {
        sodium_memzero(keys, KHALA_CRYPT_KEYS_MAX * sizeof(*keys));
        sodium_munlock(keys, KHALA_CRYPT_KEYS_MAX * sizeof(*keys));
    }
    free(keys);
    free(c);
    return rc;
}

int khala__crypt_reload(khala_crypt_t *c, const char *path, char *err, size_t errlen) {
    KHALA_ASSERT(c && path);
    khala_crypt_t *n = NULL;
    int rc = khala__crypt_load(path, c->types, &n, err, errlen);
    if (rc != 0)
        return rc;
    /* Swap the keys: c takes the new ones, n the old ones, which its close zeroes. */
    crypt_key_t *keys = c->keys;
    size_t nkeys = c->nkeys, current = c->current;
    c->keys = n->keys;
    c->nkeys = n->nkeys;
    c->current = n->current;
    n->keys = keys;
    n->nkeys = nkeys;
    n->current = current;
    khala__crypt_close(n);
    return 0;
}

void khala__crypt_close(khala_crypt_t *c) {
    if (!c)
        return;
    sodium_memzero(c->keys, KHALA_CRYPT_KEYS_MAX * sizeof(*c->keys));
    sodium_munlock(c->keys, KHALA_CRYPT_KEYS_MAX * sizeof(*c->keys));
    free(c->keys);
    free(c);
}

int khala__crypt_wants(const khala_crypt_t *c, int type) {
    return c && type >= 0 && type < 32 && (c->types >> type & 1u);
}

uint32_t khala__crypt_current_id(const khala_crypt_t *c) {
    KHALA_ASSERT(c);
    return c->keys[c->current].id;
}

size_t khala__crypt_nkeys(const khala_crypt_t *c) {
    KHALA_ASSERT(c);
    return c->nkeys;
}

int khala__crypt_is_sealed(const void *data, size_t len) {
    const unsigned char *p = data;
    return len >= KHALA_CRYPT_OVERHEAD && p[0] == MAGIC0 && p[1] == 'K' && p[2] == 'C' &&
           p[3] == 'E';
}

/* Step 3: the associated data, header | type | key, into a malloc'd buffer. */
static unsigned char *make_ad(const unsigned char header[HEADER_BYTES], int type, const void *key,
                              size_t klen, size_t *adlen) {
    unsigned char *ad = malloc(HEADER_BYTES + 4 + klen + 1);
    if (!ad)
        return NULL;
    memcpy(ad, header, HEADER_BYTES);
    be32(ad + HEADER_BYTES, (uint32_t)type);
    if (klen)
        memcpy(ad + HEADER_BYTES + 4, key, klen);
    *adlen = HEADER_BYTES + 4 + klen;
    return ad;
}

int khala__crypt_seal(khala_crypt_t *c, const void *key, size_t klen, int type, const void *val,
                      size_t vlen, void **out, size_t *outlen) {
    KHALA_ASSERT(c && out && outlen && (val || vlen == 0));
    if (vlen > SIZE_MAX - KHALA_CRYPT_OVERHEAD)
        return -EOVERFLOW;
    const crypt_key_t *k = &c->keys[c->current];
    size_t n = vlen + KHALA_CRYPT_OVERHEAD, adlen = 0;
    unsigned char *env = malloc(n);
    if (!env)
        return -ENOMEM;
    /* Step 1. */
    env[0] = MAGIC0;
    env[1] = 'K';
    env[2] = 'C';
    env[3] = 'E';
    be32(env + 4, k->id);
    /* Step 2. */
    randombytes_buf(env + HEADER_BYTES, NONCE_BYTES);
    /* Step 3. */
    unsigned char *ad = make_ad(env, type, key, klen, &adlen);
    if (!ad) {
        free(env);
        return -ENOMEM;
    }
    /* Step 4. */
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(env + HEADER_BYTES + NONCE_BYTES, &clen, val, vlen,
                                               ad, adlen, NULL, env + HEADER_BYTES, k->key);
    free(ad);
    KHALA_ASSERT(clen == vlen + TAG_BYTES);
    c->st.sealed++;
    *out = env;
    *outlen = n;
    return 0;
}

int khala__crypt_unseal(khala_crypt_t *c, const void *key, size_t klen, int type, const void *in,
                        size_t inlen, void **out, size_t *outlen, char *why, size_t whylen) {
    KHALA_ASSERT(c && out && outlen && (in || inlen == 0));
    const unsigned char *env = in;
    if (!khala__crypt_is_sealed(in, inlen)) {
        c->st.auth_failures++;
        return khala__errbuf(why, whylen, KHALA_EAUTH, "not a sealed value (%zu bytes)", inlen);
    }
    uint32_t id = from_be32(env + 4);
    const crypt_key_t *k = NULL;
    for (size_t i = 0; i < c->nkeys && !k; i++)
        if (c->keys[i].id == id)
            k = &c->keys[i];
    if (!k) {
        c->st.auth_failures++;
        c->st.unknown_key++;
        return khala__errbuf(why, whylen, KHALA_EAUTH, "key id %u is not in the key file",
                             (unsigned)id);
    }
    size_t adlen = 0, plen = inlen - KHALA_CRYPT_OVERHEAD;
    unsigned char *ad = make_ad(env, type, key, klen, &adlen);
    unsigned char *plain = malloc(plen ? plen : 1);
    if (!ad || !plain) {
        free(ad);
        free(plain);
        return -ENOMEM;
    }
    unsigned long long mlen = 0;
    int rc = crypto_aead_xchacha20poly1305_ietf_decrypt(
        plain, &mlen, NULL, env + HEADER_BYTES + NONCE_BYTES, inlen - HEADER_BYTES - NONCE_BYTES,
        ad, adlen, env + HEADER_BYTES, k->key);
    free(ad);
    if (rc != 0) {
        free(plain);
        c->st.auth_failures++;
        return khala__errbuf(why, whylen, KHALA_EAUTH,
                             "the tag does not verify under key id %u (altered, or moved from "
                             "another key or type)",
                             (unsigned)id);
    }
    c->st.opened++;
    *out = plain;
    *outlen = (size_t)mlen;
    return 0;
}

void khala__crypt_count_failure(khala_crypt_t *c) {
    KHALA_ASSERT(c);
    c->st.auth_failures++;
}

void khala__crypt_stats(const khala_crypt_t *c, khala_crypt_stats_t *out) {
    KHALA_ASSERT(c && out);
    *out = c->st;
}
