/* replay-main.c - runs a libFuzzer target over every file of a corpus directory (and over each
 * file's prefixes), so the targets run in every build, with or without clang's fuzzer runtime. */
#include <glib.h>
#include <stdint.h>
#include <stdio.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
main(int argc, char **argv)
{
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS-DIR\n", argv[0]);
    return 2;
  }
  g_autoptr(GError) error = NULL;
  g_autoptr(GDir) dir = g_dir_open(argv[1], 0, &error);
  if (dir == NULL) {
    fprintf(stderr, "%s\n", error->message);
    return 1;
  }
  guint files = 0;
  const char *name;
  while ((name = g_dir_read_name(dir)) != NULL) {
    g_autofree char *path = g_build_filename(argv[1], name, NULL);
    g_autofree char *data = NULL;
    gsize len = 0;
    if (!g_file_get_contents(path, &data, &len, &error)) {
      fprintf(stderr, "%s\n", error->message);
      return 1;
    }
    for (gsize cut = 0; cut <= len; cut++)
      LLVMFuzzerTestOneInput((const uint8_t *)data, cut);
    files++;
  }
  if (files == 0) {
    fprintf(stderr, "%s: empty corpus\n", argv[1]);
    return 1;
  }
  printf("replayed %u corpus files (every prefix of each)\n", files);
  return 0;
}
