/* fuzz-imap-login.c - arbitrary client bytes before login: the reader must never crash, leak,
 * or hold more than its limits, and must give the same events whether the input comes at once
 * or byte by byte. A command the reader accepts as LOGIN or AUTHENTICATE also goes through the
 * login-name extraction the proxy runs on it. */
#include "libcore/imap-login.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Appends every event but NEED_MORE to out; FALSE once the reader failed. */
static gboolean
drain(UsherImapReader *r, GString *out)
{
  for (;;) {
    g_auto(UsherImapCmd) cmd = {0};
    char *tag = NULL;
    const char *why = NULL;
    UsherImapEvent ev = usher_imap_reader_next(r, &cmd, &tag, &why);
    if (ev == USHER_IMAP_NEED_MORE)
      return TRUE;
    g_string_append_printf(out, "|%d", ev);
    if (tag != NULL) {
      g_string_append_printf(out, "[%s %s]", tag, why);
      g_free(tag);
    }
    if (ev == USHER_IMAP_FAIL)
      return FALSE;
    g_assert(usher_imap_reader_pending(r) < (gsize)1 << 30);
    if (ev != USHER_IMAP_COMMAND && ev != USHER_IMAP_SASL_LINE)
      continue;
    g_string_append_printf(out, "<%s %s", cmd.tag != NULL ? cmd.tag : "",
                           cmd.name != NULL ? cmd.name : "");
    for (guint i = 0; i < cmd.args->len; i++) {
      UsherImapArg *a = &g_array_index(cmd.args, UsherImapArg, i);
      g_string_append_printf(out, " %d:%zu:", a->type, a->len);
      if (a->value != NULL)
        g_string_append_len(out, a->value, (gssize)a->len);
    }
    g_string_append_c(out, '>');
    const char *u, *p;
    gsize ul, pl;
    if (cmd.type == USHER_IMAP_CMD_LOGIN && usher_imap_login_args(&cmd, &u, &ul, &p, &pl))
      g_assert(u != NULL && p != NULL);
    if (cmd.args->len > 0 &&
        (ev == USHER_IMAP_SASL_LINE || cmd.type == USHER_IMAP_CMD_AUTHENTICATE)) {
      UsherImapArg *last = &g_array_index(cmd.args, UsherImapArg, cmd.args->len - 1);
      for (int m = USHER_SASL_PLAIN; m <= USHER_SASL_XOAUTH2; m++) {
        const char *why2 = NULL;
        g_autofree char *name = last->value != NULL
                                  ? usher_sasl_login_name(m, (const guint8 *)last->value,
                                                          last->len, &why2)
                                  : NULL;
        g_assert(last->value == NULL || (name == NULL) == (why2 != NULL));
      }
    }
    if (cmd.type == USHER_IMAP_CMD_AUTHENTICATE && cmd.args->len == 1)
      usher_imap_reader_expect_sasl(r);
  }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  g_autoptr(UsherImapReader) whole = usher_imap_reader_new();
  g_autoptr(GString) a = g_string_new(NULL);
  usher_imap_reader_feed(whole, data, size);
  drain(whole, a);
  g_autoptr(UsherImapReader) bytes = usher_imap_reader_new();
  g_autoptr(GString) b = g_string_new(NULL);
  for (size_t i = 0; i < size; i++) {
    usher_imap_reader_feed(bytes, data + i, 1);
    if (!drain(bytes, b))
      break; /* failed: the proxy closes */
  }
  g_assert(g_string_equal(a, b));
  return 0;
}
