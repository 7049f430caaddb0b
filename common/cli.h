/* cli.h - what the command-line programs (usherd, usherctl, ushersim) share. */
#pragma once

#include <glib.h>

G_BEGIN_DECLS

/* Call first in main(): the locale from the environment, and help texts that read right in any
 * locale (GLib's "[OPTION…]" becomes "[OPTION...]" where the locale is not UTF-8). */
void usher_cli_init(void);

G_END_DECLS
