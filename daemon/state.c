/* state.c - what usherd keeps across restarts, in [daemon] state_dir.
 *
 * users.snapshot: the user directory, written at a clean stop and every
 * users_snapshot_interval, read back at start when it is younger than user_expire. A director
 * that restarts, or a whole ring restarting at once, then keeps every user on its backend
 * (Dovecot forgets them all). Format, text so that an operator can read it:
 *
 *   usherd users snapshot 1
 *   written <UNIX seconds>
 *   <hash>\t<backend ip>\t<timestamp>          one line per user, oldest first
 *   end <number of users>
 *
 * Files are written atomically: a temporary file in the same directory, fsync, rename over the
 * old one, fsync of the directory. A crash at any point leaves the old file or the new one, and
 * a file without its "end" line (cut short) is refused whole. */
#include "daemon/usherd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SNAPSHOT_NAME "users.snapshot"
#define SNAPSHOT_MAGIC "usherd users snapshot 1"

static char *
snapshot_path(const Usherd *u)
{
  return g_build_filename(u->config->state_dir, SNAPSHOT_NAME, NULL);
}

/* Writes data to path atomically (see above). */
gboolean
usherd_write_file_atomic(const char *path, const char *data, gsize len, GError **error)
{
  g_autofree char *dir = g_path_get_dirname(path);
  if (g_mkdir_with_parents(dir, 0750) != 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: %s", dir,
                g_strerror(errno));
    return FALSE;
  }
  g_autofree char *tmp = g_strdup_printf("%s.tmp.%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) {
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: %s", tmp,
                g_strerror(errno));
    return FALSE;
  }
  gsize done = 0;
  while (done < len) {
    ssize_t n = write(fd, data + done, len - done);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      int saved = errno;
      close(fd);
      unlink(tmp);
      g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "%s: write: %s", tmp,
                  g_strerror(saved));
      return FALSE;
    }
    done += (gsize)n;
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    int saved = errno;
    unlink(tmp);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "%s: %s", tmp,
                g_strerror(saved));
    return FALSE;
  }
  if (rename(tmp, path) != 0) {
    int saved = errno;
    unlink(tmp);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(saved), "rename to %s: %s", path,
                g_strerror(saved));
    return FALSE;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)fsync(dfd);
    close(dfd);
  }
  return TRUE;
}

gboolean
usherd_state_save_users(Usherd *u, GError **error)
{
  if (u->config->state_dir[0] == '\0')
    return TRUE;
  gint64 t0 = g_get_monotonic_time();
  g_autoptr(GArray) users = usher_director_list_users(u->director, NULL);
  GString *text = g_string_sized_new(64 + users->len * 36);
  g_string_append_printf(text, SNAPSHOT_MAGIC "\nwritten %" G_GINT64_FORMAT "\n",
                         usherd_now().wall_us / G_USEC_PER_SEC);
  for (guint i = 0; i < users->len; i++) {
    const UsherUserEntry *e = &g_array_index(users, UsherUserEntry, i);
    char ip[USHER_IP_STRLEN];
    g_string_append_printf(text, "%u\t%s\t%u\n", e->hash, usher_ip_to_string(&e->host, ip),
                           e->timestamp);
  }
  g_string_append_printf(text, "end %u\n", users->len);
  g_autofree char *path = snapshot_path(u);
  gboolean ok = usherd_write_file_atomic(path, text->str, text->len, error);
  g_string_free(text, TRUE);
  if (ok)
    g_info("saved %u users to %s in %" G_GINT64_FORMAT " ms", users->len, path,
           (g_get_monotonic_time() - t0) / 1000);
  return ok;
}

/* The last line of a snapshot, "end <count>": a file cut short lacks it and is refused whole. */
static gboolean
snapshot_complete(const char *data, gsize len, guint *count_out)
{
  if (len < 2 || data[len - 1] != '\n')
    return FALSE;
  const char *last = g_strrstr_len(data, (gssize)len - 1, "\n");
  last = last != NULL ? last + 1 : data;
  return sscanf(last, "end %u\n", count_out) == 1;
}

/* Reads the snapshot back before the director starts. A missing file is normal (first start);
 * a broken or stale one is reported and ignored. The file is mapped, not copied, and each line
 * goes straight into the director, so loading 1M users needs no memory beyond the directory. */
void
usherd_state_load_users(Usherd *u)
{
  if (u->config->state_dir[0] == '\0')
    return;
  g_autofree char *path = snapshot_path(u);
  g_autoptr(GError) error = NULL;
  g_autoptr(GMappedFile) file = g_mapped_file_new(path, FALSE, &error);
  if (file == NULL) {
    if (!g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      g_warning("user snapshot %s not read: %s", path, error->message);
    return;
  }
  const char *data = g_mapped_file_get_contents(file);
  gsize len = g_mapped_file_get_length(file);
  guint count;
  gint64 written;
  const char *header_end = NULL;
  if (len < sizeof(SNAPSHOT_MAGIC) || memcmp(data, SNAPSHOT_MAGIC "\n", sizeof(SNAPSHOT_MAGIC)) != 0 ||
      sscanf(data + sizeof(SNAPSHOT_MAGIC), "written %" G_GINT64_FORMAT, &written) != 1 ||
      (header_end = memchr(data + sizeof(SNAPSHOT_MAGIC), '\n', len - sizeof(SNAPSHOT_MAGIC))) ==
        NULL) {
    g_warning("user snapshot %s: not a usherd users snapshot (version 1): ignored", path);
    return;
  }
  if (!snapshot_complete(data, len, &count)) {
    g_warning("user snapshot %s is incomplete (no \"end\" line; a crash while it was written?): "
              "ignored",
              path);
    return;
  }
  UsherNow now = usherd_now();
  gint64 now_secs = now.wall_us / G_USEC_PER_SEC;
  guint expire = usher_director_get_user_expire_secs(u->director);
  if (written + expire <= now_secs) {
    g_message("user snapshot %s is %" G_GINT64_FORMAT " s old, more than user_expire (%u s): "
              "every entry in it has expired; ignored",
              path, now_secs - written, expire);
    return;
  }
  guint restored = 0, skipped = 0, seen = 0, lineno = 2;
  const char *line = header_end + 1, *end = data + len;
  while (line < end && !g_str_has_prefix(line, "end ")) {
    const char *nl = memchr(line, '\n', (gsize)(end - line));
    lineno++;
    char buf[128];
    gsize n = (gsize)(nl - line);
    UsherIp ip;
    guint32 hash, ts;
    char ip_text[USHER_IP_STRLEN];
    gboolean ok = n < sizeof(buf);
    if (ok) {
      memcpy(buf, line, n);
      buf[n] = '\0';
      ok = sscanf(buf, "%u\t%45[0-9a-fA-F.:]\t%u", &hash, ip_text, &ts) == 3 &&
           usher_ip_parse(ip_text, -1, &ip);
    }
    if (!ok) {
      g_warning("user snapshot %s: line %u is not \"hash<TAB>ip<TAB>timestamp\": the rest is "
                "ignored",
                path, lineno);
      break;
    }
    seen++;
    if (usher_director_restore_user(u->director, now, hash, &ip, ts))
      restored++;
    else
      skipped++;
    line = nl + 1;
  }
  if (seen != count && restored + skipped == seen)
    g_warning("user snapshot %s: %u entries where its end line says %u", path, seen, count);
  usherd_core_after_call(u);
  g_message("restored %u users from %s (written %" G_GINT64_FORMAT " s ago; %u skipped: expired, "
            "or on a backend that is gone)",
            restored, path, now_secs - written, skipped);
}

static gboolean
on_snapshot_timer(gpointer data)
{
  Usherd *u = data;
  g_autoptr(GError) error = NULL;
  if (!usherd_state_save_users(u, &error))
    g_warning("user snapshot not saved: %s", error->message);
  return G_SOURCE_CONTINUE;
}

void
usherd_state_start(Usherd *u)
{
  if (u->config->state_dir[0] == '\0' || u->config->users_snapshot_interval_secs == 0)
    return;
  u->snapshot_timer = g_timeout_source_new_seconds(u->config->users_snapshot_interval_secs);
  g_source_set_callback(u->snapshot_timer, on_snapshot_timer, u, NULL);
  g_source_attach(u->snapshot_timer, u->context);
}

void
usherd_state_stop(Usherd *u)
{
  if (u->snapshot_timer != NULL) {
    g_source_destroy(u->snapshot_timer);
    g_clear_pointer(&u->snapshot_timer, g_source_unref);
  }
}
