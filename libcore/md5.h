/* md5.h - MD5 (RFC 1321). Used only because Dovecot's user hash and vhost points are MD5 based;
 * it is not a security primitive here. Own implementation so the hot placement path allocates
 * nothing (GChecksum allocates per digest). */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

typedef struct {
  guint32 state[4];
  guint64 length_bytes;
  guint8 block[64];
  guint block_fill;
} UsherMd5;

void usher_md5_init(UsherMd5 *ctx);
void usher_md5_update(UsherMd5 *ctx, const void *data, gsize len);
void usher_md5_final(UsherMd5 *ctx, guint8 digest_out[16]);

/* One-shot digest. */
void usher_md5(const void *data, gsize len, guint8 digest_out[16]);

/* The first four digest bytes read big-endian: the 32-bit value Dovecot derives from MD5. */
guint32 usher_md5_prefix32(const guint8 digest[16]);

G_END_DECLS
