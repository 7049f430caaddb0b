/* fuzz-director.c - a peer that lies: arbitrary bytes on a ring connection of a real director.
 *
 * The input is split in two: the first part is sent by a peer that connected to us, the second
 * by the peer we connected to; both after a valid greeting, so the fuzzer reaches every command
 * handler, not only the handshake checks. Between chunks the clock advances and timers run. The
 * director must never crash, leak, or break its own invariants (checked via the user directory
 * and host table checks). */
#include "libcore/config.h"
#include "libcore/director.h"

#include <stdint.h>
#include <string.h>

static const char config_text[] =
  "[ring]\ndirectors = 127.0.5.1:19190 127.0.5.2:19190 127.0.5.3:19190\n"
  "[backends]\nhosts = 127.0.2.1 127.0.2.2=50 127.0.2.3@eu ::1=7\n"
  "[director]\nuser_expire = 60s\nflush_socket = unix:/run/flush\n";

static void
drain(UsherDirector *d, UsherConnId *out, guint64 *kicks, guint *n_kicks)
{
  GArray *effects = usher_director_take_effects(d);
  for (guint i = 0; i < effects->len; i++) {
    UsherEffect *e = &g_array_index(effects, UsherEffect, i);
    if (e->type == USHER_EFFECT_CONNECT)
      *out = e->connect.conn;
    if (e->type == USHER_EFFECT_KICK && *n_kicks < 64)
      kicks[(*n_kicks)++] = e->kick.id;
  }
  g_array_unref(effects);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  static UsherConfig *config;
  if (config == NULL) {
    config = usher_config_parse(config_text, strlen(config_text), "fuzz.conf", NULL);
    g_assert(config != NULL);
  }
  UsherRingAddr self;
  g_assert(usher_ip_parse("127.0.5.1", -1, &self.ip));
  self.port = 19190;
  UsherNow now = {10000000, G_GINT64_CONSTANT(1795393974000000)};
  UsherDirector *d = usher_director_new(config, &self, 1, now, NULL);
  g_assert(d != NULL);
  UsherConnId out = 0;
  guint64 kicks[64];
  guint n_kicks = 0;
  usher_director_start(d, now);
  drain(d, &out, kicks, &n_kicks);
  if (out != 0)
    usher_director_peer_connected(d, now, out);
  UsherIp peer;
  g_assert(usher_ip_parse("127.0.5.3", -1, &peer));
  UsherConnId in = usher_director_peer_accepted(d, now, &peer);
  drain(d, &out, kicks, &n_kicks);

  static const char greet_in[] = "VERSION\tdirector\t1\t9\nME\t127.0.5.3\t19190\t1795393974\n";
  static const char greet_out[] = "VERSION\tdirector\t1\t9\nME\t127.0.5.2\t19190\t1795393974\n";
  usher_director_peer_bytes(d, now, in, greet_in, sizeof(greet_in) - 1);
  if (out != 0)
    usher_director_peer_bytes(d, now, out, greet_out, sizeof(greet_out) - 1);
  drain(d, &out, kicks, &n_kicks);

  size_t half = size / 2;
  size_t pos = 0;
  while (pos < size) {
    /* Chunk length and clock step come from the data itself. */
    size_t chunk = 1 + (data[pos] % 97);
    if (pos + chunk > size)
      chunk = size - pos;
    UsherConnId conn = pos < half ? in : out;
    if (conn != 0)
      usher_director_peer_bytes(d, now, conn, data + pos, chunk);
    now.mono_us += (gint64)(data[pos] & 0x0f) * 700000;
    now.wall_us += (gint64)(data[pos] & 0x0f) * 700000;
    pos += chunk;
    usher_director_on_deadline(d, now);
    drain(d, &out, kicks, &n_kicks);
    if (n_kicks > 0)
      usher_director_kick_done(d, now, kicks[--n_kicks]);
  }
  /* Let every timer run out. */
  for (int i = 0; i < 8; i++) {
    now.mono_us += 20000000;
    now.wall_us += 20000000;
    usher_director_on_deadline(d, now);
    drain(d, &out, kicks, &n_kicks);
  }
  UsherHostTable *hosts = usher_director_get_hosts(d);
  for (guint t = 0; t < usher_host_table_n_tags(hosts); t++) {
    const char *why;
    g_assert(usher_user_dir_check(usher_host_table_nth_tag(hosts, t)->users, &why));
  }
  (void)usher_director_state_fingerprint(d);
  usher_director_free(d);
  return 0;
}
