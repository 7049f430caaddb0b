/* json-strict.h - checks that a text is JSON as RFC 8259 defines it, before json-glib reads it.
 *
 * json-glib 1.6 reads more than JSON: octal and hexadecimal numbers (0100 is 64), ".5",
 * single-quoted strings, unknown escapes, comments, and anything after the first value; it keeps
 * the last of two equal keys; and its error positions can be far from the mistake. A scenario
 * with any of those would run with values its author did not write. This scanner accepts exactly
 * RFC 8259 (UTF-8, a byte order mark ignored, nesting at most 64 deep), refuses a key given twice
 * in one object (compared after unescaping), and reports the first problem as
 * "SOURCE:LINE:COLUMN: what (not valid JSON)", the column counted in characters.
 */
#pragma once

#include <glib.h>

#define SIM_JSON_ERROR (g_quark_from_static_string("sim-json-error"))

gboolean sim_json_check(const char *data, gsize len, const char *source, GError **error);
