/* config-file.c - file access for configuration; parsing and validation live in libcore. */
#include "common/config-file.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

UsherConfig *
usher_config_load_file(const char *path, GError **error)
{
  struct stat st;
  if (stat(path, &st) != 0) {
    int err = errno;
    g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(err), "%s: cannot read: %s", path,
                g_strerror(err));
    return NULL;
  }
  if (!S_ISREG(st.st_mode)) {
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_INVAL, "%s: not a regular file", path);
    return NULL;
  }
  if (st.st_size > USHER_CONFIG_FILE_MAX_BYTES) {
    g_set_error(error, G_FILE_ERROR, G_FILE_ERROR_FAILED,
                "%s: %lld bytes is over the limit of %d bytes for a configuration file", path,
                (long long)st.st_size, USHER_CONFIG_FILE_MAX_BYTES);
    return NULL;
  }
  g_autofree char *data = NULL;
  gsize len = 0;
  g_autoptr(GError) local = NULL;
  if (!g_file_get_contents(path, &data, &len, &local)) {
    g_set_error(error, G_FILE_ERROR, local->code, "%s: cannot read: %s", path, local->message);
    return NULL;
  }
  return usher_config_parse(data, len, path, error);
}
