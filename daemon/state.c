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
  /* A test hook (tests/daemon): stop half-way for this many milliseconds, so that a test can
   * kill the process in the middle of a write. */
  const char *pause_env = g_getenv("USHERD_TEST_WRITE_PAUSE_MS");
  gint64 pause_ms = pause_env != NULL ? g_ascii_strtoll(pause_env, NULL, 10) : 0;
  gsize done = 0;
  while (done < len) {
    if (pause_ms > 0 && done == 0 && len > 1) {
      ssize_t half = write(fd, data, len / 2);
      if (half > 0)
        done += (gsize)half;
      g_usleep((gulong)pause_ms * 1000);
      continue;
    }
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
  /* The descriptor is closed whatever fsync says (a failing disk would otherwise leak one on
   * every retry, and keep the unlinked file's space). */
  int synced = fsync(fd), sync_errno = errno;
  if (close(fd) != 0 && synced == 0) {
    synced = -1;
    sync_errno = errno;
  }
  if (synced != 0) {
    unlink(tmp);
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(sync_errno), "%s: %s", tmp,
                g_strerror(sync_errno));
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

/* A copy of the user directory taken on the core thread, written out by whoever holds it. */
typedef struct {
  GArray *users; /* UsherUserEntry, in memory order until the writer sorts them */
  char *path;
  gint64 written_secs;
  gint64 listed_us; /* what taking the copy cost the core thread */
  gint64 t0;
  gint *done; /* set (atomically) when a thread has written it */
} SnapshotJob;

static SnapshotJob *
snapshot_job_take(Usherd *u)
{
  SnapshotJob *j = g_new0(SnapshotJob, 1);
  j->t0 = g_get_monotonic_time();
  /* In memory order: walking the oldest-first list instead is a cache miss per user, a third
   * of a second for a million on the core thread. The writer sorts the copy. */
  j->users = usher_director_list_users_stored(u->director);
  j->path = snapshot_path(u);
  j->written_secs = usherd_now().wall_us / G_USEC_PER_SEC;
  j->listed_us = g_get_monotonic_time() - j->t0;
  return j;
}

static void
snapshot_job_free(SnapshotJob *j)
{
  g_array_unref(j->users);
  g_free(j->path);
  g_free(j);
}

/* Oldest first, as the file promises and a restore adds them fastest; equal stamps by hash. */
static gint
entry_older(gconstpointer a, gconstpointer b)
{
  const UsherUserEntry *x = a, *y = b;
  if (x->timestamp != y->timestamp)
    return x->timestamp < y->timestamp ? -1 : 1;
  return x->hash < y->hash ? -1 : x->hash > y->hash;
}

static gboolean
snapshot_job_write(const SnapshotJob *j, GError **error)
{
  g_array_sort(j->users, entry_older);
  GString *text = g_string_sized_new(64 + j->users->len * 36);
  g_string_append_printf(text, SNAPSHOT_MAGIC "\nwritten %" G_GINT64_FORMAT "\n", j->written_secs);
  for (guint i = 0; i < j->users->len; i++) {
    const UsherUserEntry *e = &g_array_index(j->users, UsherUserEntry, i);
    char ip[USHER_IP_STRLEN];
    g_string_append_printf(text, "%u\t%s\t%u\n", e->hash, usher_ip_to_string(&e->host, ip),
                           e->timestamp);
  }
  g_string_append_printf(text, "end %u\n", j->users->len);
  gboolean ok = usherd_write_file_atomic(j->path, text->str, text->len, error);
  g_string_free(text, TRUE);
  if (ok)
    g_info("saved %u users to %s in %" G_GINT64_FORMAT " ms (%" G_GINT64_FORMAT
           " ms of it on the core thread)",
           j->users->len, j->path, (g_get_monotonic_time() - j->t0) / 1000, j->listed_us / 1000);
  return ok;
}

/* The periodic snapshot's writer: formatting a million users and an fsync take long enough
 * (tenths of a second, seconds on a busy disk) that the core thread, which answers every
 * login's lookup, only takes the copy. */
static gpointer
snapshot_thread(gpointer data)
{
  SnapshotJob *j = data;
  g_autoptr(GError) error = NULL;
  if (!snapshot_job_write(j, &error))
    g_warning("user snapshot not saved: %s", error->message);
  gint *done = j->done;
  snapshot_job_free(j);
  g_atomic_int_set(done, 1);
  return NULL;
}

/* Waits for a periodic write still under way: the next write (or the one at stop) goes to the
 * same temporary file, and must be the newer one on disk. */
static void
snapshot_thread_join(Usherd *u)
{
  if (u->snapshot_thread != NULL)
    g_thread_join(g_steal_pointer(&u->snapshot_thread));
}

gboolean
usherd_state_save_users(Usherd *u, GError **error)
{
  if (u->config->state_dir[0] == '\0')
    return TRUE;
  snapshot_thread_join(u);
  SnapshotJob *j = snapshot_job_take(u);
  gboolean ok = snapshot_job_write(j, error);
  snapshot_job_free(j);
  return ok;
}

/* A whole line [p, end) "<prefix><decimal number>\n" with the number in [min, max]. The mapped
 * snapshot has no NUL after its last byte: nothing here reads past the line (no scanf). */
static gboolean
number_line(const char *p, const char *end, const char *prefix, gint64 min, gint64 max,
            gint64 *out)
{
  const char *nl = memchr(p, '\n', (gsize)(end - p));
  gsize plen = strlen(prefix);
  if (nl == NULL || (gsize)(nl - p) <= plen || (gsize)(nl - p) - plen > 20 ||
      memcmp(p, prefix, plen) != 0)
    return FALSE;
  char digits[24];
  memcpy(digits, p + plen, (gsize)(nl - p) - plen);
  digits[(gsize)(nl - p) - plen] = '\0';
  return g_ascii_string_to_signed(digits, 10, min, max, out, NULL);
}

/* The last line of a snapshot, "end <count>": a file cut short lacks it and is refused whole. */
static gboolean
snapshot_complete(const char *data, gsize len, guint *count_out)
{
  if (len < 2 || data[len - 1] != '\n')
    return FALSE;
  const char *last = g_strrstr_len(data, (gssize)len - 1, "\n");
  last = last != NULL ? last + 1 : data;
  gint64 count;
  if (!number_line(last, data + len, "end ", 0, G_MAXUINT, &count))
    return FALSE;
  *count_out = (guint)count;
  return TRUE;
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
      !number_line(data + sizeof(SNAPSHOT_MAGIC), data + len, "written ", 0, G_MAXINT64,
                   &written) ||
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
  if (u->config->state_dir[0] == '\0')
    return G_SOURCE_CONTINUE;
  if (u->snapshot_thread != NULL && !g_atomic_int_get(&u->snapshot_done)) {
    g_warning("user snapshot: the previous one is still being written (a slow disk?): "
              "this one is skipped");
    return G_SOURCE_CONTINUE;
  }
  snapshot_thread_join(u);
  g_autoptr(GError) error = NULL;
  SnapshotJob *j = snapshot_job_take(u);
  g_atomic_int_set(&u->snapshot_done, 0);
  j->done = &u->snapshot_done;
  u->snapshot_thread = g_thread_try_new("usherd-snapshot", snapshot_thread, j, &error);
  if (u->snapshot_thread == NULL) {
    /* No thread to be had: write it here, as at a stop. */
    g_warning("user snapshot: no thread for the write (%s): written on the core thread",
              error->message);
    g_clear_error(&error);
    if (!snapshot_job_write(j, &error))
      g_warning("user snapshot not saved: %s", error->message);
    snapshot_job_free(j);
  }
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
  snapshot_thread_join(u);
  if (u->snapshot_timer != NULL) {
    g_source_destroy(u->snapshot_timer);
    g_clear_pointer(&u->snapshot_timer, g_source_unref);
  }
  if (u->runtime_timer != NULL) {
    g_source_destroy(u->runtime_timer);
    g_clear_pointer(&u->runtime_timer, g_source_unref);
  }
}

/* ---- Runtime state: backends and ring members changed at run time --------------------------------- *
 *
 * runtime.state holds the ring's backends (with vhosts, tag, up/down state and its time,
 * hostname) and ring members as this director last saw them, so that admin changes survive a
 * restart of the whole ring (Dovecot falls back to its configuration file). It is written within
 * a second of any change (made here or arriving from the ring) and at a clean stop:
 *
 *   usherd runtime state 1
 *   written <UNIX seconds>
 *   config <SHA-256 of the configuration file's [ring] directors and backend list>
 *   director <ip>\t<port>
 *   backend <ip>\t<tag>\t<vhosts>\t<U|D>\t<up/down time>\t<hostname>
 *   end
 *
 * Precedence: at start the state replaces [ring] directors and the backends of the file only if
 * the file's lists are unchanged since the state was written (the "config" line). An operator
 * who edits those lists means them: the file then wins, and the state is ignored (logged). */

#define RUNTIME_NAME "runtime.state"
#define RUNTIME_MAGIC "usherd runtime state 1"
#define RUNTIME_CHECK_SECS 1

static char *
runtime_path(const Usherd *u)
{
  return g_build_filename(u->config->state_dir, RUNTIME_NAME, NULL);
}

static void
append_addr(GString *out, const UsherIp *ip, guint16 port)
{
  char text[USHER_IP_STRLEN];
  g_string_append_printf(out, "director %s\t%u\n", usher_ip_to_string(ip, text), port);
}

static void
append_backend(GString *out, const UsherIp *ip, const char *tag, guint vhosts, gboolean down,
               gint64 updown, const char *hostname)
{
  char text[USHER_IP_STRLEN];
  g_string_append_printf(out, "backend %s\t", usher_ip_to_string(ip, text));
  usher_ring_escape_append(out, tag, -1);
  g_string_append_printf(out, "\t%u\t%c\t%" G_GINT64_FORMAT "\t", vhosts, down ? 'D' : 'U',
                         updown);
  usher_ring_escape_append(out, hostname != NULL ? hostname : "", -1);
  g_string_append_c(out, '\n');
}

/* The configuration file's lists, as the "config" line's checksum covers them. */
static char *
config_lists_checksum(const Usherd *u)
{
  const UsherConfig *c = u->config;
  g_autoptr(GString) text = g_string_new(NULL);
  for (guint i = 0; i < u->file_directors->len; i++) {
    const UsherDirectorAddr *a = &g_array_index(u->file_directors, UsherDirectorAddr, i);
    append_addr(text, &a->ip, a->port);
  }
  const GPtrArray *backends = c->initial_backends != NULL ? c->initial_backends : c->backends;
  for (guint i = 0; i < backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(backends, i);
    append_backend(text, &b->ip, b->tag, b->vhost_count, b->down, 0, b->hostname);
  }
  return g_compute_checksum_for_string(G_CHECKSUM_SHA256, text->str, (gssize)text->len);
}

/* The ring members and backends as the director has them now. */
static char *
runtime_lists(Usherd *u)
{
  GString *text = g_string_new(NULL);
  g_autoptr(GArray) members = usher_director_list_members(u->director);
  UsherRingAddr last = {0};
  for (guint i = 0; i < members->len; i++) {
    const UsherMemberInfo *m = &g_array_index(members, UsherMemberInfo, i);
    if (!m->has_addr || m->removed || m->addr.port == 0)
      continue; /* port 0: a standalone director's own identity, not a ring member */
    if (usher_ip_equal(&m->addr.ip, &last.ip) && m->addr.port == last.port)
      continue; /* one line per member, not per connection */
    last = m->addr;
    append_addr(text, &m->addr.ip, m->addr.port);
  }
  g_autoptr(GArray) hosts = usher_director_list_hosts(u->director);
  for (guint i = 0; i < hosts->len; i++) {
    const UsherHostInfo *h = &g_array_index(hosts, UsherHostInfo, i);
    append_backend(text, &h->ip, h->tag, h->vhost_count, h->down, h->last_updown_change,
                   h->hostname);
  }
  return g_string_free(text, FALSE);
}

void
usherd_state_config_reloaded(Usherd *u)
{
  g_free(u->config_checksum);
  u->config_checksum = config_lists_checksum(u);
  g_clear_pointer(&u->runtime_written, g_free);
}

gboolean
usherd_state_save_runtime(Usherd *u, GError **error)
{
  if (u->config->state_dir[0] == '\0')
    return TRUE;
  g_autofree char *lists = runtime_lists(u);
  if (g_strcmp0(lists, u->runtime_written) == 0)
    return TRUE;
  if (u->config_checksum == NULL)
    u->config_checksum = config_lists_checksum(u);
  const char *checksum = u->config_checksum;
  g_autofree char *text = g_strdup_printf(RUNTIME_MAGIC "\nwritten %" G_GINT64_FORMAT
                                          "\nconfig %s\n%send\n",
                                          usherd_now().wall_us / G_USEC_PER_SEC, checksum, lists);
  g_autofree char *path = runtime_path(u);
  if (!usherd_write_file_atomic(path, text, strlen(text), error))
    return FALSE;
  g_free(u->runtime_written);
  u->runtime_written = g_steal_pointer(&lists);
  g_debug("runtime state saved to %s", path);
  return TRUE;
}

static gboolean
parse_field_uint(const char *s, guint64 max, guint64 *out)
{
  return g_ascii_string_to_unsigned(s, 10, 0, max, out, NULL);
}

/* Parses a runtime.state text into directors and backends; FALSE with a reason on any error. */
static gboolean
parse_runtime(char *text, const char *expect_checksum, GArray *directors, GPtrArray *backends,
              char **why_out)
{
  g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
  guint n = g_strv_length(lines);
  if (n < 4 || strcmp(lines[0], RUNTIME_MAGIC) != 0) {
    *why_out = g_strdup("not a usherd runtime state (version 1)");
    return FALSE;
  }
  if (!g_str_has_prefix(lines[2], "config ")) {
    *why_out = g_strdup("line 3 is not \"config <checksum>\"");
    return FALSE;
  }
  if (strcmp(lines[2] + 7, expect_checksum) != 0) {
    *why_out = g_strdup("the configuration file's [ring] directors or backends changed since it "
                        "was written: the file wins");
    return FALSE;
  }
  gboolean ended = FALSE;
  for (guint i = 3; i < n && !ended; i++) {
    char *line = lines[i];
    if (strcmp(line, "end") == 0) {
      ended = TRUE;
    } else if (g_str_has_prefix(line, "director ")) {
      g_auto(GStrv) f = g_strsplit(line + 9, "\t", -1);
      UsherDirectorAddr a = {0};
      guint64 port;
      if (g_strv_length(f) != 2 || !usher_ip_parse(f[0], -1, &a.ip) ||
          !parse_field_uint(f[1], 65535, &port)) {
        *why_out = g_strdup_printf("line %u is not \"director <ip>\\t<port>\"", i + 1);
        return FALSE;
      }
      a.port = (guint16)port;
      g_array_append_val(directors, a);
    } else if (g_str_has_prefix(line, "backend ")) {
      g_auto(GStrv) f = g_strsplit(line + 8, "\t", -1);
      UsherIp ip;
      guint64 vhosts, updown;
      if (g_strv_length(f) != 6 || !usher_ip_parse(f[0], -1, &ip) ||
          !parse_field_uint(f[2], USHER_VHOST_MAX_RING, &vhosts) || /* a peer's, maybe */
          (strcmp(f[3], "U") != 0 && strcmp(f[3], "D") != 0) ||
          !parse_field_uint(f[4], G_MAXUINT32, &updown)) {
        *why_out = g_strdup_printf("line %u is not a backend line", i + 1);
        return FALSE;
      }
      for (guint k = 1; k <= 5; k += 4)
        f[k][usher_ring_unescape_inplace(f[k], strlen(f[k]))] = '\0';
      UsherBackendConfig *b = usher_backend_config_new(&ip, f[1], (guint)vhosts);
      b->down = f[3][0] == 'D';
      b->updown_change = (gint64)updown;
      b->hostname = f[5][0] != '\0' ? g_strdup(f[5]) : NULL;
      g_ptr_array_add(backends, b);
    } else {
      *why_out = g_strdup_printf("line %u is not understood", i + 1);
      return FALSE;
    }
  }
  if (!ended) {
    *why_out = g_strdup("it has no \"end\" line (cut short)");
    return FALSE;
  }
  return TRUE;
}

static int
backend_cmp(gconstpointer a, gconstpointer b)
{
  const UsherBackendConfig *x = *(UsherBackendConfig *const *)a;
  const UsherBackendConfig *y = *(UsherBackendConfig *const *)b;
  return usher_ip_cmp(&x->ip, &y->ip);
}

void
usherd_state_apply_runtime(Usherd *u)
{
  if (u->config->state_dir[0] == '\0')
    return;
  /* Of the file's lists, before the state replaces them. */
  u->config_checksum = config_lists_checksum(u);
  const char *checksum = u->config_checksum;
  g_autofree char *path = runtime_path(u);
  g_autofree char *text = NULL;
  g_autoptr(GError) error = NULL;
  if (!g_file_get_contents(path, &text, NULL, &error)) {
    if (!g_error_matches(error, G_FILE_ERROR, G_FILE_ERROR_NOENT))
      g_warning("runtime state %s not read: %s", path, error->message);
    return;
  }
  g_autoptr(GArray) directors = g_array_new(FALSE, TRUE, sizeof(UsherDirectorAddr));
  g_autoptr(GPtrArray) backends =
    g_ptr_array_new_with_free_func((GDestroyNotify)usher_backend_config_free);
  g_autofree char *why = NULL;
  if (!parse_runtime(text, checksum, directors, backends, &why)) {
    g_message("runtime state %s not used: %s", path, why);
    return;
  }
  gboolean self_listed = u->config->directors->len == 0 && directors->len == 0;
  for (guint i = 0; i < directors->len && !self_listed; i++) {
    const UsherDirectorAddr *a = &g_array_index(directors, UsherDirectorAddr, i);
    self_listed = usher_ip_equal(&a->ip, &u->self.ip) && a->port == u->self.port;
  }
  if (!self_listed) {
    g_warning("runtime state %s not used: this director was removed from the ring it records; "
              "starting from the configuration file",
              path);
    return;
  }
  g_ptr_array_sort(backends, backend_cmp);
  /* The file's backends stay the "initial configuration". */
  u->config->initial_backends = g_steal_pointer(&u->config->backends);
  u->config->backends = g_steal_pointer(&backends);
  g_array_unref(u->config->directors);
  u->config->directors = g_steal_pointer(&directors);
  g_message("runtime state %s applied: %u ring members and %u backends as the ring had them",
            path, u->config->directors->len, u->config->backends->len);
}

static gboolean
on_runtime_check(gpointer data)
{
  Usherd *u = data;
  g_autoptr(GError) error = NULL;
  if (!usherd_state_save_runtime(u, &error))
    g_warning("runtime state not saved: %s", error->message);
  return G_SOURCE_CONTINUE;
}

void
usherd_state_watch_runtime(Usherd *u)
{
  if (u->config->state_dir[0] == '\0')
    return;
  u->runtime_timer = g_timeout_source_new_seconds(RUNTIME_CHECK_SECS);
  g_source_set_callback(u->runtime_timer, on_runtime_check, u, NULL);
  g_source_attach(u->runtime_timer, u->context);
}
