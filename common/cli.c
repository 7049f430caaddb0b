/* cli.c - what the command-line programs share: GLib's help text in any locale. */
#include "common/cli.h"

#include <locale.h>
#include <stdio.h>
#include <string.h>

/* GLib writes its usage line as "[OPTION…]" and converts every g_print() to the locale's
 * charset, so in the C locale (a cron job, a container, CI) the ellipsis came out as "?". This
 * handler writes the text as UTF-8 when the locale takes it, and with "..." when it does not. */
static void
print_handler(const char *text)
{
  const char *charset;
  if (g_get_charset(&charset)) {
    fputs(text, stdout);
    return;
  }
  for (const char *p = text; *p != '\0';) {
    const char *e = strstr(p, "\xe2\x80\xa6"); /* U+2026 */
    if (e == NULL) {
      fputs(p, stdout);
      break;
    }
    fwrite(p, 1, (size_t)(e - p), stdout);
    fputs("...", stdout);
    p = e + 3;
  }
}

void
usher_cli_init(void)
{
  setlocale(LC_ALL, "");
  g_set_print_handler(print_handler);
}
