/* config-file.h - read a configuration file from disk and hand it to libcore's parser. */
#pragma once

#include "libcore/config.h"

G_BEGIN_DECLS

/* Largest configuration file accepted (a fleet of thousands of backends fits easily). */
#define USHER_CONFIG_FILE_MAX_BYTES USHER_CONFIG_MAX_BYTES

/* Errors name the path. */
UsherConfig *usher_config_load_file(const char *path, GError **error);

G_END_DECLS
