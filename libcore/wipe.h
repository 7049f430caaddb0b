/* wipe.h - forgetting what a login line held: the readers of the pre-login protocols see the
 * client's password, and what they free or leave behind in a buffer is wiped first (a core dump
 * or a later allocation must not find it). Internal to libcore. */
#pragma once

#include <glib.h>
#include <string.h>

/* explicit_bzero, which the compiler cannot drop; an empty GByteArray has no data at all. */
static inline void
usher_wipe(void *data, gsize len)
{
  if (len > 0)
    explicit_bzero(data, len);
}

static inline void
usher_wipe_free(char *text)
{
  if (text == NULL)
    return;
  usher_wipe(text, strlen(text));
  g_free(text);
}

/* Drops the first n bytes of buf; the bytes the shift leaves past the new end are wiped. */
static inline void
usher_bytes_drop_front(GByteArray *buf, gsize n)
{
  if (n == 0)
    return;
  guint len = buf->len;
  g_byte_array_remove_range(buf, 0, (guint)n);
  usher_wipe(buf->data + buf->len, len - buf->len);
}

static inline void
usher_bytes_wipe_unref(GByteArray *buf)
{
  if (buf == NULL)
    return;
  usher_wipe(buf->data, buf->len);
  g_byte_array_unref(buf);
}
