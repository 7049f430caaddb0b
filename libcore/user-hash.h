/* user-hash.h - Dovecot-compatible username hashing (director_username_hash).
 *
 * A format is compiled once (usher_hash_format_new) and then applied to many names. Supported
 * format text: literal bytes, "%%", and the variables %u (whole name), %n (part before the first
 * '@', or the whole name), %d (part after the first '@', or empty), each optionally with the
 * modifier L (ASCII lowercase) or U (ASCII uppercase), and the long forms %{user}, %{username},
 * %{domain} (also with L/U: %L{user}). Anything else is refused when the format is compiled, so a
 * typo in the configuration cannot silently hash users differently from Dovecot; so is a format
 * with no variable at all ("Lu" for "%Lu"), which would put every user on one backend.
 */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

#define USHER_HASH_FORMAT_DEFAULT "%Lu"

typedef struct UsherHashFormat UsherHashFormat;

#define USHER_HASH_FORMAT_ERROR (usher_hash_format_error_quark())
GQuark usher_hash_format_error_quark(void);

UsherHashFormat *usher_hash_format_new(const char *format, GError **error);
void usher_hash_format_free(UsherHashFormat *format);
const char *usher_hash_format_get_text(const UsherHashFormat *format);

/* Hash len bytes of name (len < 0: NUL-terminated). Never returns 0: Dovecot reserves 0 for
 * "no hash" and maps it to 1. Bytes >= 0x80 are never case-mapped. */
guint32 usher_hash_format_user(const UsherHashFormat *format, const char *name, gssize len);

/* The name as the format spells it before hashing (what %Lu, %n@%d, ... make of it); for the
 * LMTP recipient -> user mapping. (transfer full) */
char *usher_hash_format_expand(const UsherHashFormat *format, const char *name, gssize len);

/* Same result as a one-off compiled format; for tools and tests. */
guint32 usher_user_hash(const char *name, gssize len, const char *format);

/* A login hasher: the hash format plus the master user separator, exactly as the director
 * hashes a login name ("user*master" is hashed as "user" when the separator is '*'). Immutable
 * after creation, so any thread may use it at once without locking. */
typedef struct UsherLoginHasher UsherLoginHasher;

/* separator: NULL or "" for none, else its first character. */
UsherLoginHasher *usher_login_hasher_new(const char *format, const char *master_user_separator,
                                         GError **error);
void usher_login_hasher_free(UsherLoginHasher *hasher);
/* The length of the part of a login name that is hashed (cut at the separator). */
gsize usher_login_hasher_cut(const UsherLoginHasher *hasher, const char *login, gsize len);
/* The user hash of a login name (len < 0: NUL-terminated). */
guint32 usher_login_hasher_hash(const UsherLoginHasher *hasher, const char *login, gssize len);
/* The hash of the whole name, without the separator cut (what Dovecot's admin commands hash). */
guint32 usher_login_hasher_hash_whole(const UsherLoginHasher *hasher, const char *name,
                                      gssize len);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherHashFormat, usher_hash_format_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherLoginHasher, usher_login_hasher_free)

G_END_DECLS
