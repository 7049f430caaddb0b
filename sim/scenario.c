/* scenario.c - loading and validating simulator scenarios (see scenario.h, doc/scenarios.md). */
#include "sim/scenario.h"
#include "sim/json-strict.h"

#include "libcore/host.h"

#include <string.h>

G_DEFINE_QUARK(sim-scenario-error-quark, sim_scenario_error)

/* ---- Errors with field paths ------------------------------------------------------------------- */

typedef struct {
  const char *source;
  GError **error;
  gboolean failed;
} Ctx;

static gboolean fail(Ctx *ctx, const char *path, const char *fmt, ...) G_GNUC_PRINTF(3, 4);

static gboolean
fail(Ctx *ctx, const char *path, const char *fmt, ...)
{
  if (ctx->failed)
    return FALSE;
  va_list args;
  va_start(args, fmt);
  g_autofree char *msg = g_strdup_vprintf(fmt, args);
  va_end(args);
  g_set_error(ctx->error, SIM_SCENARIO_ERROR, 0, "%s: %s: %s", ctx->source, path, msg);
  ctx->failed = TRUE;
  return FALSE;
}

static char *
sub(const char *path, const char *member)
{
  return path[0] != '\0' ? g_strdup_printf("%s.%s", path, member) : g_strdup(member);
}

/* Every member of obj must be in allowed (NULL-terminated). */
/* A duration as a scenario writes it: 0s, 90s, 15m, 2h, 250ms (the largest whole unit). */
static char *
format_duration(gint64 us)
{
  static const struct {
    gint64 us;
    const char *unit;
  } units[] = {{86400 * G_GINT64_CONSTANT(1000000), "d"}, {3600 * G_GINT64_CONSTANT(1000000), "h"},
               {60 * G_GINT64_CONSTANT(1000000), "m"},    {1000000, "s"},
               {1000, "ms"},                              {1, "us"}};
  if (us == 0)
    return g_strdup("0s");
  for (gsize i = 0; i < G_N_ELEMENTS(units); i++)
    if (us % units[i].us == 0)
      return g_strdup_printf("%" G_GINT64_FORMAT "%s", us / units[i].us, units[i].unit);
  return g_strdup_printf("%" G_GINT64_FORMAT "us", us);
}

/* A member the event or check cannot do without. */
static gboolean
require(Ctx *ctx, const char *p, JsonObject *o, const char *member)
{
  if (json_object_get_member(o, member) != NULL)
    return TRUE;
  return fail(ctx, p, "\"%s\" is missing", member);
}

static gboolean
only_members(Ctx *ctx, const char *path, JsonObject *obj, const char *const *allowed)
{
  g_autoptr(GList) members = json_object_get_members(obj);
  members = g_list_sort(members, (GCompareFunc)strcmp);
  for (GList *l = members; l != NULL; l = l->next) {
    gboolean ok = FALSE;
    for (guint i = 0; allowed[i] != NULL && !ok; i++)
      ok = strcmp(l->data, allowed[i]) == 0;
    if (!ok) {
      g_autofree char *p = sub(path, l->data);
      g_autofree char *known = g_strjoinv(", ", (char **)allowed);
      return fail(ctx, p, "unknown field (known here: %s)", known);
    }
  }
  return TRUE;
}

static JsonObject *
get_object(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gboolean required)
{
  g_autofree char *p = sub(path, member);
  JsonNode *n = json_object_get_member(obj, member);
  if (n == NULL) {
    if (required)
      fail(ctx, p, "missing");
    return NULL;
  }
  if (!JSON_NODE_HOLDS_OBJECT(n)) {
    fail(ctx, p, "must be an object");
    return NULL;
  }
  return json_node_get_object(n);
}

static gboolean
get_uint(Ctx *ctx, const char *path, JsonObject *obj, const char *member, guint64 lo, guint64 hi,
         guint64 *out)
{
  JsonNode *n = json_object_get_member(obj, member);
  if (n == NULL)
    return TRUE;
  g_autofree char *p = sub(path, member);
  if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_DOUBLE) {
    char shown[G_ASCII_DTOSTR_BUF_SIZE];
    g_ascii_formatd(shown, sizeof(shown), "%g", json_node_get_double(n));
    if (strpbrk(shown, ".einf") == NULL)
      g_strlcat(shown, ".0", sizeof(shown)); /* 100.0, not "100 is not allowed" */
    return fail(ctx, p,
                "%s is not allowed: a whole number from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT
                " (written without a decimal point or exponent)",
                shown, lo, hi);
  }
  if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_INT64)
    return fail(ctx, p, "must be a whole number from %" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT,
                lo, hi);
  gint64 v = json_node_get_int(n);
  if (v < 0 || (guint64)v < lo || (guint64)v > hi)
    return fail(ctx, p, "%" G_GINT64_FORMAT " is out of range (%" G_GUINT64_FORMAT " to %" G_GUINT64_FORMAT ")",
                v, lo, hi);
  *out = (guint64)v;
  return TRUE;
}

static gboolean
get_bool(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gboolean *out)
{
  JsonNode *n = json_object_get_member(obj, member);
  if (n == NULL)
    return TRUE;
  g_autofree char *p = sub(path, member);
  if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_BOOLEAN)
    return fail(ctx, p, "must be true or false");
  *out = json_node_get_boolean(n);
  return TRUE;
}
/* TRUE if s has no control character; fails naming path otherwise. Strings that become
 * configuration lines (backends, settings) would gain lines from a newline. */
static gboolean
no_controls(Ctx *ctx, const char *path, const char *s)
{
  for (const char *c = s; *c != '\0'; c++)
    if ((guchar)*c < 0x20 || *c == 0x7f)
      return fail(ctx, path, "contains a control character (byte 0x%02x at offset %u)",
                  (guchar)*c, (guint)(c - s));
  return TRUE;
}


static const char *
get_string(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gboolean required)
{
  JsonNode *n = json_object_get_member(obj, member);
  g_autofree char *p = sub(path, member);
  if (n == NULL) {
    if (required)
      fail(ctx, p, "missing");
    return NULL;
  }
  if (!JSON_NODE_HOLDS_VALUE(n) || json_node_get_value_type(n) != G_TYPE_STRING) {
    fail(ctx, p, "must be a string");
    return NULL;
  }
  const char *s = json_node_get_string(n);
  if (strcmp(member, "description") != 0 && !no_controls(ctx, p, s))
    return NULL;
  return s;
}

/* A tag, empty for none: the configuration's grammar. */
static gboolean
tag_ok(Ctx *ctx, const char *path, const char *member, const char *tag)
{
  if (tag == NULL || tag[0] == '\0' || usher_tag_valid(tag, strlen(tag)))
    return TRUE;
  g_autofree char *p = sub(path, member);
  return fail(ctx, p, "\"%s\" is not a tag: 1 to %d letters, digits, '.', '_' or '-'", tag,
              USHER_TAG_MAX_LEN);
}

/* A number that may have a fraction, as thousandths (logins per second, percentages). */
static gboolean
get_milli(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gint64 lo_milli,
          gint64 hi_milli, gint64 *out)
{
  JsonNode *n = json_object_get_member(obj, member);
  if (n == NULL)
    return TRUE;
  g_autofree char *p = sub(path, member);
  if (!JSON_NODE_HOLDS_VALUE(n))
    return fail(ctx, p, "must be a number");
  gint64 v;
  GType t = json_node_get_value_type(n);
  if (t == G_TYPE_INT64) {
    gint64 i = json_node_get_int(n);
    if (i > G_MAXINT64 / 1000 || i < G_MININT64 / 1000)
      return fail(ctx, p, "out of range (%.3f to %.3f)", lo_milli / 1000.0, hi_milli / 1000.0);
    v = i * 1000;
  } else if (t == G_TYPE_DOUBLE) {
    /* Thousandths, rounded: the only place a float is read, and it becomes an integer at once. */
    gdouble d = json_node_get_double(n) * 1000.0;
    if (!(d >= -9.2e18 && d <= 9.2e18))
      return fail(ctx, p, "out of range (%.3f to %.3f)", lo_milli / 1000.0, hi_milli / 1000.0);
    v = (gint64)(d + (d >= 0 ? 0.5 : -0.5));
  } else {
    return fail(ctx, p, "must be a number");
  }
  if (v < lo_milli || v > hi_milli)
    return fail(ctx, p, "out of range (%.3f to %.3f)", lo_milli / 1000.0, hi_milli / 1000.0);
  *out = v;
  return TRUE;
}

/* One or more terms NUMBER[UNIT] ("90s", "1h30m", "10m 5s", "250us"); a bare number is seconds and
 * must stand alone. An optional leading sign applies to the whole (clock steps). */
gboolean
sim_parse_duration_us(const char *text, gint64 *us_out)
{
  static const struct {
    const char *unit;
    guint64 mult;
  } units[] = {
    {"us", 1},
    {"ms", 1000},
    {"secs", 1000000},
    {"sec", 1000000},
    {"s", 1000000},
    {"mins", G_GUINT64_CONSTANT(60000000)},
    {"min", G_GUINT64_CONSTANT(60000000)},
    {"m", G_GUINT64_CONSTANT(60000000)},
    {"hours", G_GUINT64_CONSTANT(3600000000)},
    {"hour", G_GUINT64_CONSTANT(3600000000)},
    {"h", G_GUINT64_CONSTANT(3600000000)},
    {"days", G_GUINT64_CONSTANT(86400000000)},
    {"day", G_GUINT64_CONSTANT(86400000000)},
    {"d", G_GUINT64_CONSTANT(86400000000)},
  };
  const char *p = text;
  gboolean neg = FALSE;
  if (*p == '+' || *p == '-') {
    neg = *p == '-';
    p++;
  }
  guint64 total = 0;
  guint terms = 0;
  gboolean bare = FALSE;
  while (*p != '\0') {
    if (!g_ascii_isdigit(*p))
      return FALSE;
    guint64 v = 0;
    while (g_ascii_isdigit(*p)) {
      if (v > G_MAXINT64 / 10 - 10)
        return FALSE;
      v = v * 10 + (guint64)(*p - '0');
      p++;
    }
    guint64 mult = 0;
    for (guint i = 0; i < G_N_ELEMENTS(units) && mult == 0; i++) {
      gsize len = strlen(units[i].unit);
      if (strncmp(p, units[i].unit, len) == 0 && !g_ascii_isalpha(p[len])) {
        mult = units[i].mult;
        p += len;
      }
    }
    if (mult == 0) {
      if (*p != '\0')
        return FALSE;
      mult = 1000000;
      bare = TRUE;
    }
    if (v > (guint64)G_MAXINT64 / mult || total + v * mult > (guint64)G_MAXINT64)
      return FALSE;
    total += v * mult;
    terms++;
    while (*p == ' ')
      p++;
  }
  if (terms == 0 || (bare && terms > 1))
    return FALSE;
  *us_out = neg ? -(gint64)total : (gint64)total;
  return TRUE;
}

static gboolean
get_duration(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gint64 lo, gint64 hi,
             gint64 *out)
{
  JsonNode *n = json_object_get_member(obj, member);
  if (n != NULL && JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) != G_TYPE_STRING) {
    g_autofree char *np = sub(path, member);
    return fail(ctx, np, "must be a duration written as a string, with its unit (\"30s\", "
                         "\"15m\", \"500ms\")");
  }
  const char *s = get_string(ctx, path, obj, member, FALSE);
  if (s == NULL)
    return !ctx->failed;
  g_autofree char *p = sub(path, member);
  gint64 v;
  if (!sim_parse_duration_us(s, &v))
    return fail(ctx, p, "\"%s\" is not a duration (for example 500us, 20ms, 30s, 15m, 2h, 1d)",
                s);
  if (v < lo || v > hi) {
    g_autofree char *a = format_duration(lo), *b = format_duration(hi);
    return fail(ctx, p, "\"%s\" is out of range: %s to %s", s, a, b);
  }
  *out = v;
  return TRUE;
}

/* A distribution: a duration string (fixed), or {"kind": ..., ...}. */
static gboolean
get_dist(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gint64 lo, gint64 hi,
         SimDist *out)
{
  JsonNode *n = json_object_get_member(obj, member);
  if (n == NULL)
    return TRUE;
  g_autofree char *p = sub(path, member);
  if (JSON_NODE_HOLDS_VALUE(n)) {
    out->kind = SIM_DIST_FIXED;
    out->b_us = 0;
    return get_duration(ctx, path, obj, member, lo, hi, &out->a_us);
  }
  if (!JSON_NODE_HOLDS_OBJECT(n))
    return fail(ctx, p, "must be a duration or an object with \"kind\"");
  JsonObject *o = json_node_get_object(n);
  const char *kind = get_string(ctx, p, o, "kind", TRUE);
  if (kind == NULL)
    return FALSE;
  static const char *const fixed[] = {"kind", "value", NULL};
  static const char *const range[] = {"kind", "min", "max", NULL};
  static const char *const mean[] = {"kind", "mean", NULL};
  SimDist d = {0};
  if (strcmp(kind, "fixed") == 0) {
    d.kind = SIM_DIST_FIXED;
    if (!only_members(ctx, p, o, fixed) || !get_duration(ctx, p, o, "value", lo, hi, &d.a_us))
      return FALSE;
    if (json_object_get_member(o, "value") == NULL)
      return fail(ctx, p, "\"value\" is missing");
  } else if (strcmp(kind, "uniform") == 0 || strcmp(kind, "log-uniform") == 0) {
    d.kind = kind[0] == 'u' ? SIM_DIST_UNIFORM : SIM_DIST_LOG_UNIFORM;
    if (!only_members(ctx, p, o, range) || !get_duration(ctx, p, o, "min", lo, hi, &d.a_us) ||
        !get_duration(ctx, p, o, "max", lo, hi, &d.b_us))
      return FALSE;
    if (json_object_get_member(o, "min") == NULL || json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "\"min\" and \"max\" are required");
    if (d.a_us > d.b_us)
      return fail(ctx, p, "min is above max");
    if (d.kind == SIM_DIST_LOG_UNIFORM && d.a_us == 0)
      return fail(ctx, p, "a log-uniform min must be above 0");
  } else if (strcmp(kind, "exponential") == 0) {
    d.kind = SIM_DIST_EXPONENTIAL;
    if (!only_members(ctx, p, o, mean) || !get_duration(ctx, p, o, "mean", lo, hi, &d.a_us))
      return FALSE;
    if (json_object_get_member(o, "mean") == NULL)
      return fail(ctx, p, "\"mean\" is missing");
  } else {
    g_autofree char *kp = sub(p, "kind");
    return fail(ctx, kp, "\"%s\" is not a kind (fixed, uniform, exponential, log-uniform)", kind);
  }
  *out = d;
  return TRUE;
}

static gboolean
get_ip(Ctx *ctx, const char *path, JsonObject *obj, const char *member, gboolean required,
       UsherIp *out, gboolean *present_out)
{
  const char *s = get_string(ctx, path, obj, member, required);
  if (present_out != NULL)
    *present_out = s != NULL;
  if (s == NULL)
    return !ctx->failed;
  if (!usher_ip_parse(s, -1, out)) {
    g_autofree char *p = sub(path, member);
    return fail(ctx, p, "\"%s\" is not an IP address", s);
  }
  return TRUE;
}

/* ---- Sections ---------------------------------------------------------------------------------- */

/* cluster.settings / cluster.health: each member becomes a "key = value" line of the
 * configuration (the [director] / [health] group), in name order. */
static gboolean
append_group(Ctx *ctx, JsonObject *cl, const char *name, GString *conf)
{
  JsonObject *group = get_object(ctx, "cluster", cl, name, FALSE);
  if (group == NULL)
    return !ctx->failed;
  g_autoptr(GList) members = json_object_get_members(group);
  members = g_list_sort(members, (GCompareFunc)strcmp);
  for (GList *l = members; l != NULL; l = l->next) {
    JsonNode *v = json_object_get_member(group, l->data);
    const char *key = l->data;
    g_autofree char *key_shown = g_strescape(key, NULL);
    g_autofree char *p = g_strdup_printf("cluster.%s.%s", name, key_shown);
    if (key[0] == '\0' || strspn(key, "abcdefghijklmnopqrstuvwxyz0123456789_") != strlen(key))
      return fail(ctx, p, "is not a setting name: lower-case letters, digits and '_'");
    if (JSON_NODE_HOLDS_VALUE(v) && json_node_get_value_type(v) == G_TYPE_STRING &&
        !no_controls(ctx, p, json_node_get_string(v)))
      return FALSE;
    if (!JSON_NODE_HOLDS_VALUE(v) || (json_node_get_value_type(v) != G_TYPE_STRING &&
                                      json_node_get_value_type(v) != G_TYPE_INT64 &&
                                      json_node_get_value_type(v) != G_TYPE_BOOLEAN))
      return fail(ctx, p, "must be a string, a whole number or a boolean");
    if (json_node_get_value_type(v) == G_TYPE_STRING)
      g_string_append_printf(conf, "%s = %s\n", (char *)l->data, json_node_get_string(v));
    else if (json_node_get_value_type(v) == G_TYPE_BOOLEAN)
      g_string_append_printf(conf, "%s = %s\n", (char *)l->data,
                             json_node_get_boolean(v) ? "true" : "false");
    else
      g_string_append_printf(conf, "%s = %" G_GINT64_FORMAT "\n", (char *)l->data,
                             json_node_get_int(v));
  }
  return TRUE;
}

static gboolean
load_cluster(Ctx *ctx, SimScenario *sc, JsonObject *root)
{
  JsonObject *cl = get_object(ctx, "", root, "cluster", TRUE);
  if (cl == NULL)
    return FALSE;
  static const char *const allowed[] = {"directors", "backends", "settings", "capacity", "health",
                                        NULL};
  if (!only_members(ctx, "cluster", cl, allowed))
    return FALSE;
  guint64 n = 3, capacity = 0;
  if (!get_uint(ctx, "cluster", cl, "directors", 1, SIM_MAX_DIRECTORS, &n) ||
      !get_uint(ctx, "cluster", cl, "capacity", 0, G_MAXUINT32, &capacity))
    return FALSE;
  sc->directors = (guint)n;

  GString *conf = g_string_new("[ring]\ndirectors =");
  for (guint i = 0; i < sc->directors; i++)
    g_string_append_printf(conf, " 127.0.1.%u:9090", i + 1);
  g_string_append(conf, "\n[director]\n");
  if (!append_group(ctx, cl, "settings", conf)) {
    g_string_free(conf, TRUE);
    return FALSE;
  }
  if (json_object_get_member(cl, "health") != NULL) {
    g_string_append(conf, "[health]\n");
    if (!append_group(ctx, cl, "health", conf)) {
      g_string_free(conf, TRUE);
      return FALSE;
    }
  }

  /* Backends: list-grammar strings, or objects with details. */
  JsonNode *bn = json_object_get_member(cl, "backends");
  if (bn == NULL || !JSON_NODE_HOLDS_ARRAY(bn)) {
    g_string_free(conf, TRUE);
    return fail(ctx, "cluster.backends", "must be an array of backends");
  }
  JsonArray *ba = json_node_get_array(bn);
  GString *hosts = g_string_new(NULL);
  GString *groups = g_string_new(NULL);
  g_autoptr(GHashTable) caps = g_hash_table_new_full(usher_ip_table_hash, usher_ip_table_equal,
                                                     g_free, NULL);
  for (guint i = 0; i < json_array_get_length(ba); i++) {
    JsonNode *e = json_array_get_element(ba, i);
    g_autofree char *p = g_strdup_printf("cluster.backends[%u]", i);
    if (JSON_NODE_HOLDS_VALUE(e) && json_node_get_value_type(e) == G_TYPE_STRING) {
      if (!no_controls(ctx, p, json_node_get_string(e))) {
        g_string_free(conf, TRUE);
        g_string_free(hosts, TRUE);
        g_string_free(groups, TRUE);
        return FALSE;
      }
      g_string_append_printf(hosts, " %s", json_node_get_string(e));
      continue;
    }
    if (!JSON_NODE_HOLDS_OBJECT(e)) {
      g_string_free(conf, TRUE);
      g_string_free(hosts, TRUE);
      g_string_free(groups, TRUE);
      return fail(ctx, p, "must be a string like \"10.0.0.1-10.0.0.4=100\" or an object");
    }
    JsonObject *o = json_node_get_object(e);
    static const char *const ballowed[] = {"ip", "vhosts", "tag", "down", "capacity", NULL};
    UsherIp ip;
    guint64 vhosts = 100, cap = capacity;
    gboolean down = FALSE;
    const char *tag = NULL;
    if (!only_members(ctx, p, o, ballowed) || !get_ip(ctx, p, o, "ip", TRUE, &ip, NULL) ||
        !get_uint(ctx, p, o, "vhosts", 0, 1000, &vhosts) || !get_bool(ctx, p, o, "down", &down) ||
        !get_uint(ctx, p, o, "capacity", 0, G_MAXUINT32, &cap) ||
        ((tag = get_string(ctx, p, o, "tag", FALSE)) == NULL && ctx->failed) ||
        !tag_ok(ctx, p, "tag", tag)) {
      g_string_free(conf, TRUE);
      g_string_free(hosts, TRUE);
      g_string_free(groups, TRUE);
      return FALSE;
    }
    char ip_str[USHER_IP_STRLEN];
    usher_ip_to_string(&ip, ip_str);
    g_string_append_printf(hosts, " %s%s%s=%u%s%s", ip.family == USHER_IP_V6 ? "[" : "", ip_str,
                           ip.family == USHER_IP_V6 ? "]" : "", (guint)vhosts,
                           tag != NULL && tag[0] != '\0' ? "@" : "", tag != NULL ? tag : "");
    if (down)
      g_string_append_printf(groups, "[backend %s]\ndown = true\n", ip_str);
    UsherIp *key = g_memdup2(&ip, sizeof(ip));
    g_hash_table_replace(caps, key, GUINT_TO_POINTER((guint)cap + 1));
  }
  g_string_append_printf(conf, "[backends]\nhosts =%s\n%s", hosts->str, groups->str);
  g_string_free(hosts, TRUE);
  g_string_free(groups, TRUE);

  g_autoptr(GError) local = NULL;
  g_autofree char *src = g_strdup_printf("%s: cluster", ctx->source);
  sc->config = usher_config_parse(conf->str, conf->len, src, &local);
  g_string_free(conf, TRUE);
  if (sc->config == NULL) {
    g_set_error(ctx->error, SIM_SCENARIO_ERROR, 0, "%s", local->message);
    ctx->failed = TRUE;
    return FALSE;
  }
  if (sc->config->backends->len == 0)
    return fail(ctx, "cluster.backends", "at least one backend is needed");
  for (guint i = 0; i < sc->config->backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(sc->config->backends, i);
    SimBackendSpec *s = g_new0(SimBackendSpec, 1);
    s->ip = b->ip;
    s->vhosts = b->vhost_count;
    s->tag = g_strdup(b->tag);
    s->down = b->down;
    gpointer c = g_hash_table_lookup(caps, &b->ip);
    s->capacity = c != NULL ? GPOINTER_TO_UINT(c) - 1 : (guint)capacity;
    g_ptr_array_add(sc->backends, s);
  }
  return TRUE;
}

static gboolean
load_network(Ctx *ctx, SimScenario *sc, JsonObject *root)
{
  sc->latency = (SimDist){SIM_DIST_UNIFORM, 200, 1000};
  JsonObject *net = get_object(ctx, "", root, "network", FALSE);
  if (net == NULL)
    return !ctx->failed;
  static const char *const allowed[] = {"latency", "bandwidth", NULL};
  if (!only_members(ctx, "network", net, allowed) ||
      !get_dist(ctx, "network", net, "latency", 1, 10 * G_GINT64_CONSTANT(1000000), &sc->latency))
    return FALSE;
  const char *bw = get_string(ctx, "network", net, "bandwidth", FALSE);
  if (bw != NULL) {
    guint64 v;
    if (!usher_parse_size_bytes(bw, &v) || v == 0)
      return fail(ctx, "network.bandwidth", "\"%s\" is not a size in bytes per second (64k, 10M, 1G)",
                  bw);
    sc->bandwidth = v;
  }
  return !ctx->failed;
}

static gboolean
tag_known(const SimScenario *sc, const char *tag)
{
  if (tag[0] == '\0')
    return TRUE;
  for (guint i = 0; i < sc->backends->len; i++)
    if (strcmp(((SimBackendSpec *)g_ptr_array_index(sc->backends, i))->tag, tag) == 0)
      return TRUE;
  return FALSE;
}

/* workload.tag: one tag for every login ("eu"), or a mix of tags with the percentage of the users
 * that ask for each ({"eu": 70, "us": 30}). */
static gboolean
parse_tags(Ctx *ctx, JsonObject *w, SimScenario *sc)
{
  JsonNode *n = json_object_get_member(w, "tag");
  if (n == NULL || !JSON_NODE_HOLDS_OBJECT(n)) {
    const char *tag = get_string(ctx, "workload", w, "tag", FALSE);
    if (tag == NULL && ctx->failed)
      return FALSE;
    sc->tag = g_strdup(tag != NULL ? tag : "");
    if (!tag_known(sc, sc->tag))
      return fail(ctx, "workload.tag", "no backend has tag \"%s\"", sc->tag);
    sc->n_tags = 1;
    sc->tags[0] = g_strdup(sc->tag);
    sc->tag_cum[0] = 100;
    return TRUE;
  }
  JsonObject *mix = json_node_get_object(n);
  g_autoptr(GList) names = json_object_get_members(mix);
  names = g_list_sort(names, (GCompareFunc)strcmp);
  guint count = g_list_length(names);
  if (count < 1 || count > SIM_MAX_TAGS)
    return fail(ctx, "workload.tag", "a mix names 1 to %d tags, not %u", SIM_MAX_TAGS, count);
  guint64 sum = 0;
  for (GList *l = names; l != NULL; l = l->next) {
    const char *name = l->data;
    guint64 pct = 0;
    if (!get_uint(ctx, "workload.tag", mix, name, 0, 100, &pct))
      return FALSE;
    if (!tag_known(sc, name)) {
      g_autofree char *p = g_strdup_printf("workload.tag.%s", name);
      return fail(ctx, p, "no backend has tag \"%s\"", name);
    }
    sum += pct;
    sc->tags[sc->n_tags] = g_strdup(name);
    sc->tag_cum[sc->n_tags] = (guint)MIN(sum, 100);
    sc->n_tags++;
  }
  if (sum != 100)
    return fail(ctx, "workload.tag", "the shares add up to %u, not 100", (guint)sum);
  sc->tag = g_strdup(sc->tags[0]);
  return TRUE;
}

gint64
sim_scenario_user_index(const SimScenario *sc, const char *name)
{
  gsize pl = strlen(sc->user_prefix), sl = strlen(sc->user_suffix), nl = strlen(name);
  if (nl <= pl + sl || strncmp(name, sc->user_prefix, pl) != 0 ||
      strcmp(name + nl - sl, sc->user_suffix) != 0 || name[pl] == '0')
    return -1;
  guint64 v = 0;
  for (gsize i = pl; i < nl - sl; i++) {
    if (!g_ascii_isdigit(name[i]) || v > sc->users)
      return -1;
    v = v * 10 + (guint64)(name[i] - '0');
  }
  return v >= 1 && v <= sc->users ? (gint64)(v - 1) : -1;
}

const char *
sim_scenario_user_tag(const SimScenario *sc, guint64 user)
{
  if (sc->n_tags <= 1)
    return sc->tag;
  guint64 position = user * 100 / MAX(sc->users, 1); /* 0 to 99 */
  for (guint i = 0; i < sc->n_tags; i++)
    if (position < sc->tag_cum[i])
      return sc->tags[i];
  return sc->tags[sc->n_tags - 1];
}

static gboolean
load_workload(Ctx *ctx, SimScenario *sc, JsonObject *root)
{
  JsonObject *w = get_object(ctx, "", root, "workload", TRUE);
  if (w == NULL)
    return FALSE;
  static const char *const allowed[] = {"users",        "user_format",      "logins_per_second",
                                        "daily_curve",  "session_duration", "protocols",
                                        "retry",        "lmtp_duration",    "kick_duration",
                                        "tag",          NULL};
  if (!only_members(ctx, "workload", w, allowed))
    return FALSE;
  guint64 users = 1000;
  if (!get_uint(ctx, "workload", w, "users", 1, SIM_MAX_USERS, &users))
    return FALSE;
  sc->users = users;
  const char *fmt = get_string(ctx, "workload", w, "user_format", FALSE);
  if (fmt == NULL && ctx->failed)
    return FALSE;
  fmt = fmt != NULL ? fmt : "user%u@example.com";
  const char *pct = strstr(fmt, "%u");
  if (pct == NULL || strstr(pct + 2, "%") != NULL || memchr(fmt, '%', (gsize)(pct - fmt)) != NULL ||
      strlen(fmt) > 200)
    return fail(ctx, "workload.user_format", "must contain %%u exactly once and no other %%");
  sc->user_prefix = g_strndup(fmt, (gsize)(pct - fmt));
  sc->user_suffix = g_strdup(pct + 2);
  if (!parse_tags(ctx, w, sc))
    return FALSE;
  /* A run whose users have nowhere to go at the start checks nothing (no login can succeed, and
   * every check of placement passes on no data): say so, as map and plan do. A scenario that
   * takes every backend away later does so with events. */
  for (guint t = 0; t < sc->n_tags; t++) {
    gboolean usable = FALSE;
    for (guint i = 0; i < sc->config->backends->len && !usable; i++) {
      const UsherBackendConfig *b = g_ptr_array_index(sc->config->backends, i);
      usable = strcmp(b->tag, sc->tags[t]) == 0 && b->vhost_count > 0 && !b->down;
    }
    if (!usable)
      return fail(ctx, "cluster.backends",
                  "no backend%s%s%s can take users at the start: every one has vhosts 0 or is down",
                  sc->tags[t][0] != '\0' ? " with tag \"" : "", sc->tags[t],
                  sc->tags[t][0] != '\0' ? "\"" : "");
  }
  sc->rate_milli = 10000;
  if (!get_milli(ctx, "workload", w, "logins_per_second", 0, G_GINT64_CONSTANT(100000000),
                 &sc->rate_milli))
    return FALSE;
  JsonNode *curve = json_object_get_member(w, "daily_curve");
  for (guint h = 0; h < 24; h++)
    sc->daily_curve[h] = 100;
  if (curve != NULL) {
    if (!JSON_NODE_HOLDS_ARRAY(curve) || json_array_get_length(json_node_get_array(curve)) != 24)
      return fail(ctx, "workload.daily_curve", "must be an array of 24 numbers (one per hour)");
    JsonArray *a = json_node_get_array(curve);
    guint64 sum = 0;
    for (guint h = 0; h < 24; h++) {
      JsonNode *e = json_array_get_element(a, h);
      if (!JSON_NODE_HOLDS_VALUE(e) || json_node_get_value_type(e) != G_TYPE_INT64 ||
          json_node_get_int(e) < 0 || json_node_get_int(e) > 1000000) {
        g_autofree char *p = g_strdup_printf("workload.daily_curve[%u]", h);
        return fail(ctx, p, "must be a whole number from 0 to 1000000");
      }
      sc->daily_curve[h] = (guint)json_node_get_int(e);
      sum += sc->daily_curve[h];
    }
    if (sum == 0)
      return fail(ctx, "workload.daily_curve", "all weights are 0");
    sc->has_daily_curve = TRUE;
  }
  sc->session = (SimDist){SIM_DIST_LOG_UNIFORM, 30 * G_GINT64_CONSTANT(1000000),
                          2 * 3600 * G_GINT64_CONSTANT(1000000)};
  if (!get_dist(ctx, "workload", w, "session_duration", 1000,
                7 * 86400 * G_GINT64_CONSTANT(1000000), &sc->session))
    return FALSE;
  sc->mix_imap = 80;
  sc->mix_pop3 = 10;
  sc->mix_lmtp = 10;
  JsonObject *proto = get_object(ctx, "workload", w, "protocols", FALSE);
  if (proto != NULL) {
    static const char *const pallowed[] = {"imap", "pop3", "lmtp", NULL};
    guint64 a = 0, b = 0, c = 0;
    if (!only_members(ctx, "workload.protocols", proto, pallowed) ||
        !get_uint(ctx, "workload.protocols", proto, "imap", 0, 100, &a) ||
        !get_uint(ctx, "workload.protocols", proto, "pop3", 0, 100, &b) ||
        !get_uint(ctx, "workload.protocols", proto, "lmtp", 0, 100, &c))
      return FALSE;
    if (a + b + c != 100)
      return fail(ctx, "workload.protocols", "the shares add up to %u, not 100", (guint)(a + b + c));
    sc->mix_imap = (guint)a;
    sc->mix_pop3 = (guint)b;
    sc->mix_lmtp = (guint)c;
  }
  sc->retry_attempts = 3;
  sc->retry_delay_us = 5 * G_GINT64_CONSTANT(1000000);
  JsonObject *retry = get_object(ctx, "workload", w, "retry", FALSE);
  if (retry != NULL) {
    static const char *const rallowed[] = {"attempts", "delay", NULL};
    guint64 att = sc->retry_attempts;
    if (!only_members(ctx, "workload.retry", retry, rallowed) ||
        !get_uint(ctx, "workload.retry", retry, "attempts", 0, 100, &att) ||
        !get_duration(ctx, "workload.retry", retry, "delay", 0, 3600 * G_GINT64_CONSTANT(1000000),
                      &sc->retry_delay_us))
      return FALSE;
    sc->retry_attempts = (guint)att;
  }
  sc->lmtp_duration_us = 200000;
  sc->kick_duration = (SimDist){SIM_DIST_FIXED, 1000, 0};
  if (!get_duration(ctx, "workload", w, "lmtp_duration", 0, 3600 * G_GINT64_CONSTANT(1000000),
                    &sc->lmtp_duration_us) ||
      !get_dist(ctx, "workload", w, "kick_duration", 0, 3600 * G_GINT64_CONSTANT(1000000),
                &sc->kick_duration))
    return FALSE;
  return !ctx->failed;
}

/* A share in percent (fractions allowed), as thousandths of a percent. */
static gboolean
get_share(Ctx *ctx, const char *path, JsonObject *obj, const char *member, guint *out)
{
  gint64 v = *out;
  if (!get_milli(ctx, path, obj, member, 0, 100000, &v))
    return FALSE;
  *out = (guint)v;
  return TRUE;
}

static gboolean
load_driver(Ctx *ctx, SimScenario *sc, JsonObject *root, JsonObject *workload)
{
  sc->flush_duration = (SimDist){SIM_DIST_FIXED, 10000, 0};
  sc->login_cancel_after = (SimDist){SIM_DIST_FIXED, 1000000, 0};
  JsonObject *d = get_object(ctx, "", root, "driver", FALSE);
  if (d == NULL)
    return !ctx->failed;
  static const char *const allowed[] = {"kick_duration", "kick_lost",    "flush_duration",
                                        "flush_failed",  "flush_lost",   "login_cancel",
                                        "login_cancel_after",            NULL};
  if (!only_members(ctx, "driver", d, allowed))
    return FALSE;
  if (json_object_has_member(d, "kick_duration") && json_object_has_member(workload, "kick_duration"))
    return fail(ctx, "driver.kick_duration", "is also given as workload.kick_duration");
  const gint64 hour = 3600 * G_GINT64_CONSTANT(1000000);
  if (!get_dist(ctx, "driver", d, "kick_duration", 0, hour, &sc->kick_duration) ||
      !get_share(ctx, "driver", d, "kick_lost", &sc->kick_lost_milli) ||
      !get_dist(ctx, "driver", d, "flush_duration", 0, hour, &sc->flush_duration) ||
      !get_share(ctx, "driver", d, "flush_failed", &sc->flush_failed_milli) ||
      !get_share(ctx, "driver", d, "flush_lost", &sc->flush_lost_milli) ||
      !get_share(ctx, "driver", d, "login_cancel", &sc->login_cancel_milli) ||
      !get_dist(ctx, "driver", d, "login_cancel_after", 0, hour, &sc->login_cancel_after))
    return FALSE;
  if (sc->flush_failed_milli + sc->flush_lost_milli > 100000)
    return fail(ctx, "driver", "flush_failed and flush_lost add up to more than 100");
  return !ctx->failed;
}

static const struct {
  const char *name;
  SimEventKind kind;
} event_names[] = {
  {"host-add", SIM_EV_HOST_ADD},
  {"host-remove", SIM_EV_HOST_REMOVE},
  {"host-down", SIM_EV_HOST_DOWN},
  {"host-up", SIM_EV_HOST_UP},
  {"host-vhosts", SIM_EV_HOST_VHOSTS},
  {"flush", SIM_EV_FLUSH},
  {"move", SIM_EV_MOVE},
  {"kick", SIM_EV_KICK},
  {"director-crash", SIM_EV_DIRECTOR_CRASH},
  {"director-restart", SIM_EV_DIRECTOR_RESTART},
  {"director-pause", SIM_EV_DIRECTOR_PAUSE},
  {"director-resume", SIM_EV_DIRECTOR_RESUME},
  {"partition", SIM_EV_PARTITION},
  {"heal", SIM_EV_HEAL},
  {"link-delay", SIM_EV_LINK_DELAY},
  {"link-loss", SIM_EV_LINK_LOSS},
  {"link-reset", SIM_EV_LINK_RESET},
  {"clock-step", SIM_EV_CLOCK_STEP},
  {"clock-drift", SIM_EV_CLOCK_DRIFT},
  {"backend-fail", SIM_EV_BACKEND_FAIL},
  {"backend-recover", SIM_EV_BACKEND_RECOVER},
  {"workload-rate", SIM_EV_WORKLOAD_RATE},
};

const char *
sim_event_kind_name(SimEventKind kind)
{
  for (guint i = 0; i < G_N_ELEMENTS(event_names); i++)
    if (event_names[i].kind == kind)
      return event_names[i].name;
  return "?";
}

static gboolean
get_director(Ctx *ctx, SimScenario *sc, const char *path, JsonObject *o, const char *member,
             guint *out)
{
  guint64 v = 0;
  if (json_object_get_member(o, member) == NULL) {
    g_autofree char *p = sub(path, member);
    return fail(ctx, p, "missing");
  }
  JsonNode *n = json_object_get_member(o, member);
  if (JSON_NODE_HOLDS_VALUE(n) && json_node_get_value_type(n) == G_TYPE_INT64 &&
      (json_node_get_int(n) < 0 || json_node_get_int(n) >= (gint64)sc->directors)) {
    g_autofree char *p = sub(path, member);
    return fail(ctx, p, "%" G_GINT64_FORMAT " is not a director (the cluster has %u: 0 to %u)",
                json_node_get_int(n), sc->directors, sc->directors - 1);
  }
  if (!get_uint(ctx, path, o, member, 0, sc->directors - 1, &v))
    return FALSE;
  *out = (guint)v;
  return TRUE;
}

/* TRUE if ip is a backend of the scenario (cluster.backends or a host-add loaded before);
 * fails naming p.member otherwise: an event or check about a machine that is not there cannot
 * do or say anything. */
static gboolean
backend_known(Ctx *ctx, const SimScenario *sc, const char *p, const char *member, const UsherIp *ip)
{
  for (guint i = 0; i < sc->backends->len; i++)
    if (usher_ip_equal(&((SimBackendSpec *)g_ptr_array_index(sc->backends, i))->ip, ip))
      return TRUE;
  for (guint i = 0; i < sc->events->len; i++) {
    const SimScenarioEvent *ev = &g_array_index(sc->events, SimScenarioEvent, i);
    if (ev->kind == SIM_EV_HOST_ADD && usher_ip_equal(&ev->host, ip))
      return TRUE;
  }
  char text[USHER_IP_STRLEN];
  g_autofree char *mp = sub(p, member);
  return fail(ctx, mp, "%s is not a backend of the scenario (cluster.backends or an earlier host-add)",
              usher_ip_to_string(ip, text));
}

static gboolean
load_event(Ctx *ctx, SimScenario *sc, const char *p, JsonObject *o, SimScenarioEvent *ev)
{
  const char *type = get_string(ctx, p, o, "type", TRUE);
  if (type == NULL)
    return FALSE;
  gboolean found = FALSE;
  for (guint k = 0; k < G_N_ELEMENTS(event_names) && !found; k++)
    if (strcmp(type, event_names[k].name) == 0) {
      ev->kind = event_names[k].kind;
      found = TRUE;
    }
  if (!found) {
    g_autofree char *tp = sub(p, "type");
    return fail(ctx, tp, "\"%s\" is not an event type", type);
  }
  if (json_object_get_member(o, "at") == NULL) {
    g_autofree char *ap = sub(p, "at");
    return fail(ctx, ap, "missing");
  }
  if (!get_duration(ctx, p, o, "at", 0, sc->duration_us, &ev->at_us))
    return FALSE;
  guint64 v = 0;
  switch (ev->kind) {
  case SIM_EV_HOST_ADD: {
    static const char *const a[] = {"at", "type", "director", "host", "vhosts", "tag", NULL};
    v = 100;
    const char *tag = NULL;
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &ev->director) ||
        !get_ip(ctx, p, o, "host", TRUE, &ev->host, &ev->has_host) ||
        !get_uint(ctx, p, o, "vhosts", 0, 1000, &v) ||
        ((tag = get_string(ctx, p, o, "tag", FALSE)) == NULL && ctx->failed) ||
        !tag_ok(ctx, p, "tag", tag))
      return FALSE;
    ev->vhosts = (guint)v;
    ev->tag = g_strdup(tag != NULL ? tag : "");
    break;
  }
  case SIM_EV_HOST_REMOVE:
  case SIM_EV_HOST_DOWN:
  case SIM_EV_HOST_UP: {
    static const char *const a[] = {"at", "type", "director", "host", NULL};
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &ev->director) ||
        !get_ip(ctx, p, o, "host", TRUE, &ev->host, &ev->has_host))
      return FALSE;
    break;
  }
  case SIM_EV_HOST_VHOSTS: {
    static const char *const a[] = {"at", "type", "director", "host", "vhosts", NULL};
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &ev->director) ||
        !get_ip(ctx, p, o, "host", TRUE, &ev->host, &ev->has_host))
      return FALSE;
    if (json_object_get_member(o, "vhosts") == NULL) {
      g_autofree char *vp = sub(p, "vhosts");
      return fail(ctx, vp, "missing");
    }
    if (!get_uint(ctx, p, o, "vhosts", 0, 1000, &v))
      return FALSE;
    ev->vhosts = (guint)v;
    break;
  }
  case SIM_EV_FLUSH: {
    static const char *const a[] = {"at", "type", "director", "host", "force", "max_parallel",
                                    NULL};
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &ev->director) ||
        !get_ip(ctx, p, o, "host", FALSE, &ev->host, &ev->has_host) ||
        !get_bool(ctx, p, o, "force", &ev->force) ||
        !get_uint(ctx, p, o, "max_parallel", 0, 1000000, &v))
      return FALSE;
    ev->max_parallel = (guint)v;
    break;
  }
  case SIM_EV_MOVE:
  case SIM_EV_KICK: {
    static const char *const m[] = {"at", "type", "director", "user", "host", NULL};
    static const char *const k[] = {"at", "type", "director", "user", NULL};
    const char *user;
    if (!only_members(ctx, p, o, ev->kind == SIM_EV_MOVE ? m : k) ||
        !get_director(ctx, sc, p, o, "director", &ev->director) ||
        (user = get_string(ctx, p, o, "user", TRUE)) == NULL)
      return FALSE;
    ev->user = g_strdup(user);
    if (ev->kind == SIM_EV_MOVE && !get_ip(ctx, p, o, "host", TRUE, &ev->host, &ev->has_host))
      return FALSE;
    break;
  }
  case SIM_EV_DIRECTOR_CRASH:
  case SIM_EV_DIRECTOR_RESTART:
  case SIM_EV_DIRECTOR_PAUSE:
  case SIM_EV_DIRECTOR_RESUME: {
    static const char *const a[] = {"at", "type", "director", NULL};
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &ev->director))
      return FALSE;
    break;
  }
  case SIM_EV_PARTITION: {
    static const char *const a[] = {"at", "type", "groups", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    JsonNode *g = json_object_get_member(o, "groups");
    g_autofree char *gp = sub(p, "groups");
    if (g == NULL || !JSON_NODE_HOLDS_ARRAY(g) || json_array_get_length(json_node_get_array(g)) < 2)
      return fail(ctx, gp, "must be an array of at least two arrays of directors");
    ev->groups = g_array_new(FALSE, TRUE, sizeof(guint64));
    guint64 seen = 0;
    JsonArray *ga = json_node_get_array(g);
    for (guint i = 0; i < json_array_get_length(ga); i++) {
      JsonNode *e = json_array_get_element(ga, i);
      g_autofree char *ep = g_strdup_printf("%s[%u]", gp, i);
      if (!JSON_NODE_HOLDS_ARRAY(e) || json_array_get_length(json_node_get_array(e)) == 0)
        return fail(ctx, ep, "must be a non-empty array of director numbers");
      guint64 mask = 0;
      JsonArray *ea = json_node_get_array(e);
      for (guint j = 0; j < json_array_get_length(ea); j++) {
        JsonNode *x = json_array_get_element(ea, j);
        if (!JSON_NODE_HOLDS_VALUE(x) || json_node_get_value_type(x) != G_TYPE_INT64 ||
            json_node_get_int(x) < 0 || json_node_get_int(x) >= sc->directors)
          return fail(ctx, ep, "element %u is not a director (0 to %u)", j, sc->directors - 1);
        guint64 bit = G_GUINT64_CONSTANT(1) << json_node_get_int(x);
        if (seen & bit)
          return fail(ctx, ep, "director %" G_GINT64_FORMAT " is in two groups",
                      json_node_get_int(x));
        seen |= bit;
        mask |= bit;
      }
      g_array_append_val(ev->groups, mask);
    }
    break;
  }
  case SIM_EV_HEAL: {
    static const char *const a[] = {"at", "type", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    break;
  }
  case SIM_EV_LINK_DELAY:
  case SIM_EV_LINK_LOSS:
  case SIM_EV_LINK_RESET: {
    static const char *const d[] = {"at", "type", "a", "b", "delay", NULL};
    static const char *const l[] = {"at", "type", "a", "b", "percent", NULL};
    static const char *const r[] = {"at", "type", "a", "b", NULL};
    const char *const *a = ev->kind == SIM_EV_LINK_DELAY ? d : ev->kind == SIM_EV_LINK_LOSS ? l : r;
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "a", &ev->a) ||
        !get_director(ctx, sc, p, o, "b", &ev->b))
      return FALSE;
    if (ev->a == ev->b) {
      g_autofree char *bp = sub(p, "b");
      return fail(ctx, bp, "a link joins two different directors");
    }
    /* Without its figure the event would do nothing (or end an earlier one unseen): 0 says so. */
    if (ev->kind == SIM_EV_LINK_DELAY &&
        (!require(ctx, p, o, "delay") ||
         !get_duration(ctx, p, o, "delay", 0, 600 * G_GINT64_CONSTANT(1000000), &ev->value_us)))
      return FALSE;
    if (ev->kind == SIM_EV_LINK_LOSS) {
      if (!require(ctx, p, o, "percent") || !get_uint(ctx, p, o, "percent", 0, 100, &v))
        return FALSE;
      ev->percent = (guint)v;
    }
    break;
  }
  case SIM_EV_CLOCK_STEP:
  case SIM_EV_CLOCK_DRIFT: {
    static const char *const s[] = {"at", "type", "director", "step", NULL};
    static const char *const dr[] = {"at", "type", "director", "ppm", NULL};
    if (!only_members(ctx, p, o, ev->kind == SIM_EV_CLOCK_STEP ? s : dr) ||
        !get_director(ctx, sc, p, o, "director", &ev->director))
      return FALSE;
    if (ev->kind == SIM_EV_CLOCK_STEP) {
      const char *step = get_string(ctx, p, o, "step", TRUE);
      g_autofree char *sp = sub(p, "step");
      if (step == NULL)
        return FALSE;
      if (!sim_parse_duration_us(step, &ev->value_us) ||
          ev->value_us > 86400 * G_GINT64_CONSTANT(1000000) ||
          ev->value_us < -86400 * G_GINT64_CONSTANT(1000000))
        return fail(ctx, sp, "\"%s\" is not a step like \"+5s\" or \"-2m\" (at most a day)", step);
    } else {
      gint64 ppm = 0;
      if (!require(ctx, p, o, "ppm") || !get_milli(ctx, p, o, "ppm", -1000000000, 1000000000, &ppm))
        return FALSE;
      if (ppm % 1000 != 0) {
        g_autofree char *pp = sub(p, "ppm");
        return fail(ctx, pp, "must be a whole number of parts per million (-1000000 to 1000000)");
      }
      ev->ppm = (gint)(ppm / 1000);
    }
    break;
  }
  case SIM_EV_BACKEND_FAIL:
  case SIM_EV_BACKEND_RECOVER: {
    static const char *const a[] = {"at", "type", "host", "from", "mute", NULL};
    if (!only_members(ctx, p, o, a) || !get_ip(ctx, p, o, "host", TRUE, &ev->host, &ev->has_host) ||
        !get_bool(ctx, p, o, "mute", &ev->mute))
      return FALSE;
    JsonNode *f = json_object_get_member(o, "from");
    if (f != NULL) {
      g_autofree char *fp = sub(p, "from");
      if (!JSON_NODE_HOLDS_ARRAY(f) || json_array_get_length(json_node_get_array(f)) == 0)
        return fail(ctx, fp, "must be a non-empty array of director numbers (the directors that "
                             "cannot reach the backend)");
      JsonArray *fa = json_node_get_array(f);
      for (guint j = 0; j < json_array_get_length(fa); j++) {
        JsonNode *x = json_array_get_element(fa, j);
        if (!JSON_NODE_HOLDS_VALUE(x) || json_node_get_value_type(x) != G_TYPE_INT64 ||
            json_node_get_int(x) < 0 || json_node_get_int(x) >= sc->directors)
          return fail(ctx, fp, "element %u is not a director (0 to %u)", j, sc->directors - 1);
        ev->from_mask |= G_GUINT64_CONSTANT(1) << json_node_get_int(x);
      }
    }
    break;
  }
  case SIM_EV_WORKLOAD_RATE: {
    static const char *const a[] = {"at", "type", "logins_per_second", NULL};
    ev->rate_milli = -1;
    if (!only_members(ctx, p, o, a) ||
        !get_milli(ctx, p, o, "logins_per_second", 0, G_GINT64_CONSTANT(100000000),
                   &ev->rate_milli))
      return FALSE;
    if (ev->rate_milli < 0) {
      g_autofree char *rp = sub(p, "logins_per_second");
      return fail(ctx, rp, "missing");
    }
    break;
  }
  }
  /* Events that name a backend must name a known one (host-add: a new one). */
  if (ev->has_host && ev->kind != SIM_EV_HOST_ADD && !backend_known(ctx, sc, p, "host", &ev->host))
    return FALSE;
  return TRUE;
}

static const struct {
  const char *name;
  SimCheckKind kind;
} check_names[] = {
  {"max-moved", SIM_CHECK_MAX_MOVED},
  {"share", SIM_CHECK_SHARE},
  {"no-double-backend", SIM_CHECK_NO_DOUBLE_BACKEND},
  {"converged", SIM_CHECK_CONVERGED},
  {"no-pending-logins", SIM_CHECK_NO_PENDING_LOGINS},
  {"login-latency", SIM_CHECK_LOGIN_LATENCY},
  {"max-kicked", SIM_CHECK_MAX_KICKED},
  {"min-logins", SIM_CHECK_MIN_LOGINS},
  {"counter", SIM_CHECK_COUNTER},
  {"user-on", SIM_CHECK_USER_ON},
  {"max-moved-between", SIM_CHECK_MAX_MOVED_BETWEEN},
  {"moves-finished", SIM_CHECK_MOVES_FINISHED},
  {"director-users", SIM_CHECK_DIRECTOR_USERS},
};

const char *
sim_counter_name(SimCounter counter)
{
  static const char *const names[SIM_N_COUNTERS] = {
    [SIM_COUNTER_LOGINS_OK] = "logins_ok",
    [SIM_COUNTER_LOGINS_FAILED] = "logins_failed",
    [SIM_COUNTER_LOGINS_CANCELLED] = "logins_cancelled",
    [SIM_COUNTER_KICKS_LOST] = "kicks_lost",
    [SIM_COUNTER_FLUSHES_LOST] = "flushes_lost",
    [SIM_COUNTER_FLUSHES_FAILED] = "flushes_failed",
    [SIM_COUNTER_OUTPUT_OVERFLOWS] = "output_overflows",
    [SIM_COUNTER_LMTP_REDELIVERED] = "lmtp_redelivered",
    [SIM_COUNTER_DIR_KICKS_SENT] = "directors.kicks_sent",
    [SIM_COUNTER_DIR_KICKS_TIMED_OUT] = "directors.kicks_timed_out",
    [SIM_COUNTER_DIR_FLUSHES_FAILED] = "directors.flushes_failed",
    [SIM_COUNTER_DIR_FLUSHES_TIMED_OUT] = "directors.flushes_timed_out",
    [SIM_COUNTER_DIR_REQUESTS_CANCELLED] = "directors.requests_cancelled",
    [SIM_COUNTER_DIR_HANDSHAKE_PAUSES] = "directors.handshake_pauses",
    [SIM_COUNTER_DIR_MOVES_FINISHED] = "directors.moves_finished",
    [SIM_COUNTER_DIR_MOVES_TIMED_OUT] = "directors.moves_timed_out",
    [SIM_COUNTER_DIR_HEALTH_DOWNS] = "directors.health_downs",
    [SIM_COUNTER_DIR_HEALTH_UPS] = "directors.health_ups",
    [SIM_COUNTER_DIR_HEALTH_NO_QUORUM] = "directors.health_no_quorum",
  };
  return counter < SIM_N_COUNTERS ? names[counter] : "?";
}

static gboolean
load_check(Ctx *ctx, SimScenario *sc, const char *p, JsonObject *o, SimCheck *c)
{
  const char *type = get_string(ctx, p, o, "type", TRUE);
  if (type == NULL)
    return FALSE;
  gboolean found = FALSE;
  for (guint k = 0; k < G_N_ELEMENTS(check_names) && !found; k++)
    if (strcmp(type, check_names[k].name) == 0) {
      c->kind = check_names[k].kind;
      found = TRUE;
    }
  if (!found) {
    g_autofree char *tp = sub(p, "type");
    return fail(ctx, tp, "\"%s\" is not a check type", type);
  }
  c->at_us = -1;
  if (!get_duration(ctx, p, o, "at", 0, sc->duration_us, &c->at_us))
    return FALSE;
  guint64 v = 0;
  switch (c->kind) {
  case SIM_CHECK_MAX_MOVED:
  case SIM_CHECK_MAX_KICKED: {
    static const char *const a[] = {"type", "at", "max", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    if (json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "\"max\" is missing");
    if (!get_uint(ctx, p, o, "max", 0, G_MAXINT64, &c->max))
      return FALSE;
    break;
  }
  case SIM_CHECK_MIN_LOGINS: {
    static const char *const a[] = {"type", "at", "min", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    if (json_object_get_member(o, "min") == NULL)
      return fail(ctx, p, "\"min\" is missing");
    if (!get_uint(ctx, p, o, "min", 0, G_MAXINT64, &c->max))
      return FALSE;
    break;
  }
  case SIM_CHECK_COUNTER: {
    static const char *const a[] = {"type", "at", "name", "min", "max", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    const char *name = get_string(ctx, p, o, "name", TRUE);
    if (name == NULL)
      return FALSE;
    gboolean known = FALSE;
    for (guint k = 0; k < SIM_N_COUNTERS && !known; k++)
      if (strcmp(name, sim_counter_name((SimCounter)k)) == 0) {
        c->counter = (SimCounter)k;
        known = TRUE;
      }
    if (!known) {
      g_autofree char *np = sub(p, "name");
      GString *all = g_string_new(NULL);
      for (guint k = 0; k < SIM_N_COUNTERS; k++)
        g_string_append_printf(all, "%s%s", k > 0 ? ", " : "", sim_counter_name((SimCounter)k));
      fail(ctx, np, "\"%s\" is not a counter (%s)", name, all->str);
      g_string_free(all, TRUE);
      return FALSE;
    }
    c->min = 0;
    c->max = G_MAXINT64;
    if (json_object_get_member(o, "min") == NULL && json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "give \"min\", \"max\" or both");
    if (!get_uint(ctx, p, o, "min", 0, G_MAXINT64, &c->min) ||
        !get_uint(ctx, p, o, "max", 0, G_MAXINT64, &c->max))
      return FALSE;
    if (c->min > c->max)
      return fail(ctx, p, "min is above max");
    break;
  }
  case SIM_CHECK_SHARE: {
    static const char *const a[] = {"type", "at", "host", "min", "max", NULL};
    gint64 lo = 0, hi = 100000;
    if (!only_members(ctx, p, o, a) || !get_ip(ctx, p, o, "host", TRUE, &c->host, NULL) ||
        !get_milli(ctx, p, o, "min", 0, 100000, &lo) ||
        !get_milli(ctx, p, o, "max", 0, 100000, &hi))
      return FALSE;
    if (!backend_known(ctx, sc, p, "host", &c->host))
      return FALSE;
    if (json_object_get_member(o, "min") == NULL && json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "give \"min\", \"max\" or both (percent of the users)");
    if (lo > hi)
      return fail(ctx, p, "min is above max");
    c->min_x100 = (guint)(lo / 10);
    c->max_x100 = (guint)(hi / 10);
    break;
  }
  case SIM_CHECK_NO_DOUBLE_BACKEND: {
    static const char *const a[] = {"type", "at", "allow_split_brain", NULL};
    c->allow_split_brain = TRUE;
    if (!only_members(ctx, p, o, a) ||
        !get_bool(ctx, p, o, "allow_split_brain", &c->allow_split_brain))
      return FALSE;
    break;
  }
  case SIM_CHECK_CONVERGED: {
    static const char *const a[] = {"type", "at", "within", NULL};
    c->within_us = 5 * 60 * G_GINT64_CONSTANT(1000000);
    if (!only_members(ctx, p, o, a) ||
        !get_duration(ctx, p, o, "within", 0, MAX(sc->duration_us, c->within_us), &c->within_us))
      return FALSE;
    break;
  }
  case SIM_CHECK_NO_PENDING_LOGINS: {
    static const char *const a[] = {"type", "at", NULL};
    if (!only_members(ctx, p, o, a))
      return FALSE;
    break;
  }
  case SIM_CHECK_USER_ON: {
    static const char *const a[] = {"type", "at", "user", "host", NULL};
    if (!only_members(ctx, p, o, a) || !get_ip(ctx, p, o, "host", TRUE, &c->host, NULL))
      return FALSE;
    const char *user = get_string(ctx, p, o, "user", TRUE);
    if (user == NULL || !backend_known(ctx, sc, p, "host", &c->host))
      return FALSE;
    if (sim_scenario_user_index(sc, user) < 0) {
      g_autofree char *up = sub(p, "user");
      return fail(ctx, up, "\"%s\" is not a user of the workload (%s1%s to %s%" G_GUINT64_FORMAT
                  "%s)", user, sc->user_prefix, sc->user_suffix, sc->user_prefix, sc->users,
                  sc->user_suffix);
    }
    if (c->at_us < 0)
      return fail(ctx, p, "\"at\" is missing: say when the user must be on the backend");
    c->user = g_strdup(user);
    break;
  }
  case SIM_CHECK_MAX_MOVED_BETWEEN: {
    static const char *const a[] = {"type", "at", "from", "to", "max", NULL};
    if (!only_members(ctx, p, o, a) || !get_ip(ctx, p, o, "from", FALSE, &c->from, &c->has_from) ||
        !get_ip(ctx, p, o, "to", FALSE, &c->to, &c->has_to))
      return FALSE;
    if (!require(ctx, p, o, "max") || !get_uint(ctx, p, o, "max", 0, G_MAXINT64, &c->max))
      return FALSE;
    if ((c->has_from && !backend_known(ctx, sc, p, "from", &c->from)) ||
        (c->has_to && !backend_known(ctx, sc, p, "to", &c->to)))
      return FALSE;
    if (c->has_from && c->has_to && usher_ip_equal(&c->from, &c->to))
      return fail(ctx, p, "\"from\" and \"to\" are the same backend: no user moves to where it is");
    break;
  }
  case SIM_CHECK_MOVES_FINISHED: {
    static const char *const a[] = {"type", "at", "within", NULL};
    if (!only_members(ctx, p, o, a) || !require(ctx, p, o, "within") ||
        !get_duration(ctx, p, o, "within", 0, G_MAXINT64, &c->within_us))
      return FALSE;
    break;
  }
  case SIM_CHECK_DIRECTOR_USERS: {
    static const char *const a[] = {"type", "at", "director", "min", "max", NULL};
    c->max = G_MAXUINT64;
    if (!only_members(ctx, p, o, a) || !get_director(ctx, sc, p, o, "director", &c->director) ||
        !get_uint(ctx, p, o, "min", 0, G_MAXINT64, &c->min) ||
        !get_uint(ctx, p, o, "max", 0, G_MAXINT64, &c->max))
      return FALSE;
    if (json_object_get_member(o, "min") == NULL && json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "give \"min\", \"max\" or both");
    if (c->min > c->max)
      return fail(ctx, p, "min is above max");
    break;
  }
  case SIM_CHECK_LOGIN_LATENCY: {
    static const char *const a[] = {"type", "at", "percentile", "max", NULL};
    v = 99;
    if (!only_members(ctx, p, o, a) || !get_uint(ctx, p, o, "percentile", 1, 100, &v))
      return FALSE;
    c->percentile = (guint)v;
    if (json_object_get_member(o, "max") == NULL)
      return fail(ctx, p, "\"max\" is missing");
    if (!get_duration(ctx, p, o, "max", 0, G_MAXINT64, &c->max_us))
      return FALSE;
    break;
  }
  }
  g_autoptr(JsonGenerator) gen = json_generator_new();
  g_autoptr(JsonNode) node = json_node_new(JSON_NODE_OBJECT);
  json_node_set_object(node, o);
  json_generator_set_root(gen, node);
  c->text = json_generator_to_data(gen, NULL);
  return TRUE;
}

static int
cmp_event_time(gconstpointer a, gconstpointer b)
{
  const SimScenarioEvent *x = a, *y = b;
  return x->at_us < y->at_us ? -1 : x->at_us > y->at_us ? 1 : 0;
}

static void
event_clear(gpointer p)
{
  SimScenarioEvent *e = p;
  g_free(e->tag);
  g_free(e->user);
  if (e->groups != NULL)
    g_array_unref(e->groups);
}

static void
check_clear(gpointer p)
{
  g_free(((SimCheck *)p)->text);
  g_free(((SimCheck *)p)->user);
}

static void
backend_free(gpointer p)
{
  SimBackendSpec *b = p;
  g_free(b->tag);
  g_free(b);
}

static void find_idle_events(SimScenario *sc);

SimScenario *
sim_scenario_load_data(const char *data, gssize len, const char *source, GError **error)
{
  g_autoptr(SimScenario) sc = g_new0(SimScenario, 1);
  sc->source = g_strdup(source);
  sc->backends = g_ptr_array_new_with_free_func(backend_free);
  sc->events = g_array_new(FALSE, TRUE, sizeof(SimScenarioEvent));
  sc->warnings = g_ptr_array_new_with_free_func(g_free);
  g_array_set_clear_func(sc->events, event_clear);
  sc->checks = g_array_new(FALSE, TRUE, sizeof(SimCheck));
  g_array_set_clear_func(sc->checks, check_clear);
  Ctx ctx = {source, error, FALSE};

  /* Strict JSON first (json-strict.h): json-glib reads 0100 as 64 and keeps the last of two
   * equal keys. */
  g_autoptr(GError) local = NULL;
  if (!sim_json_check(data, len < 0 ? strlen(data) : (gsize)len, source, &local)) {
    g_set_error_literal(error, SIM_SCENARIO_ERROR, 0, local->message);
    return NULL;
  }
  g_autoptr(JsonParser) parser = json_parser_new();
  if (!json_parser_load_from_data(parser, data, len, &local)) {
    /* json-glib names the input "<data>": say which file, with its line and column. */
    const char *msg = local->message;
    if (g_str_has_prefix(msg, "<data>:"))
      msg += strlen("<data>:");
    g_set_error(error, SIM_SCENARIO_ERROR, 0, "%s:%s (not valid JSON)", source, msg);
    return NULL;
  }
  JsonNode *rootn = json_parser_get_root(parser);
  if (rootn == NULL || !JSON_NODE_HOLDS_OBJECT(rootn)) {
    g_set_error(error, SIM_SCENARIO_ERROR, 0, "%s: the scenario must be a JSON object", source);
    return NULL;
  }
  JsonObject *root = json_node_get_object(rootn);
  static const char *const allowed[] = {"name",     "description",      "seed",
                                        "duration", "max_events",       "sample_interval",
                                        "cluster",  "network",          "workload",
                                        "events",   "checks",           "convergence_budget",
                                        "driver",   NULL};
  if (!only_members(&ctx, "", root, allowed))
    return NULL;
  const char *name = get_string(&ctx, "", root, "name", TRUE);
  if (name == NULL)
    return NULL;
  sc->name = g_strdup(name);
  const char *desc = get_string(&ctx, "", root, "description", FALSE);
  if (ctx.failed)
    return NULL;
  sc->description = g_strdup(desc != NULL ? desc : "");
  guint64 seed = 1, max_events = 500000000;
  sc->duration_us = 3600 * G_GINT64_CONSTANT(1000000);
  if (!get_uint(&ctx, "", root, "seed", 0, G_MAXINT64, &seed) ||
      !get_uint(&ctx, "", root, "max_events", 1000, G_MAXINT64, &max_events) ||
      !get_duration(&ctx, "", root, "duration", G_GINT64_CONSTANT(1000000),
                    30 * 86400 * G_GINT64_CONSTANT(1000000), &sc->duration_us))
    return NULL;
  sc->seed = seed;
  sc->max_events = max_events;
  sc->sample_us = MAX(sc->duration_us / 48, G_GINT64_CONSTANT(1000000));
  sc->convergence_budget_us = 5 * 60 * G_GINT64_CONSTANT(1000000);
  if (!get_duration(&ctx, "", root, "sample_interval", G_GINT64_CONSTANT(1000000), sc->duration_us,
                    &sc->sample_us) ||
      !get_duration(&ctx, "", root, "convergence_budget", G_GINT64_CONSTANT(1000000),
                    MAX(sc->duration_us, sc->convergence_budget_us), &sc->convergence_budget_us))
    return NULL;
  if (!load_cluster(&ctx, sc, root) || !load_network(&ctx, sc, root) ||
      !load_workload(&ctx, sc, root) ||
      !load_driver(&ctx, sc, root, json_object_get_object_member(root, "workload")))
    return NULL;

  JsonNode *evn = json_object_get_member(root, "events");
  if (evn != NULL) {
    if (!JSON_NODE_HOLDS_ARRAY(evn)) {
      fail(&ctx, "events", "must be an array");
      return NULL;
    }
    JsonArray *ea = json_node_get_array(evn);
    for (guint i = 0; i < json_array_get_length(ea); i++) {
      JsonNode *e = json_array_get_element(ea, i);
      g_autofree char *p = g_strdup_printf("events[%u]", i);
      if (!JSON_NODE_HOLDS_OBJECT(e)) {
        fail(&ctx, p, "must be an object");
        return NULL;
      }
      SimScenarioEvent ev = {0};
      ev.file_index = i;
      if (!load_event(&ctx, sc, p, json_node_get_object(e), &ev)) {
        event_clear(&ev);
        return NULL;
      }
      g_array_append_val(sc->events, ev);
    }
    /* Stable sort: events at the same time keep their order in the file. */
    g_array_sort(sc->events, cmp_event_time);
    find_idle_events(sc);
  }
  JsonNode *chn = json_object_get_member(root, "checks");
  if (chn != NULL) {
    if (!JSON_NODE_HOLDS_ARRAY(chn)) {
      fail(&ctx, "checks", "must be an array");
      return NULL;
    }
    JsonArray *ca = json_node_get_array(chn);
    for (guint i = 0; i < json_array_get_length(ca); i++) {
      JsonNode *e = json_array_get_element(ca, i);
      g_autofree char *p = g_strdup_printf("checks[%u]", i);
      if (!JSON_NODE_HOLDS_OBJECT(e)) {
        fail(&ctx, p, "must be an object");
        return NULL;
      }
      SimCheck c = {0};
      if (!load_check(&ctx, sc, p, json_node_get_object(e), &c)) {
        check_clear(&c);
        return NULL;
      }
      g_array_append_val(sc->checks, c);
    }
  }
  return g_steal_pointer(&sc);
}

/* ---- Events that can do nothing -------------------------------------------------------------- */

static gboolean
ip_in(GArray *ips, const UsherIp *ip)
{
  for (guint i = 0; i < ips->len; i++)
    if (usher_ip_equal(&g_array_index(ips, UsherIp, i), ip))
      return TRUE;
  return FALSE;
}

static void
ip_drop(GArray *ips, const UsherIp *ip)
{
  for (guint i = 0; i < ips->len; i++)
    if (usher_ip_equal(&g_array_index(ips, UsherIp, i), ip)) {
      g_array_remove_index(ips, i);
      return;
    }
}

static void idle_warn(SimScenario *sc, const SimScenarioEvent *ev, const char *fmt, ...)
  G_GNUC_PRINTF(3, 4);

static void
idle_warn(SimScenario *sc, const SimScenarioEvent *ev, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  g_autofree char *why = g_strdup_vprintf(fmt, ap);
  va_end(ap);
  g_autofree char *at = format_duration(ev->at_us);
  g_ptr_array_add(sc->warnings,
                  g_strdup_printf("%s: events[%u] (%s at %s) does nothing: %s", sc->source,
                                  ev->file_index, sim_event_kind_name(ev->kind), at, why));
}

/* Walks the events in time order with the state they act on and notes every one that cannot do
 * anything then. Not an error: a swarm draws such events now and then, and they are harmless. */
static void
find_idle_events(SimScenario *sc)
{
  gboolean up[SIM_MAX_DIRECTORS], paused[SIM_MAX_DIRECTORS];
  for (guint i = 0; i < SIM_MAX_DIRECTORS; i++) {
    up[i] = TRUE;
    paused[i] = FALSE;
  }
  gboolean partitioned = FALSE;
  g_autoptr(GArray) hosts = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  g_autoptr(GArray) failed = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  g_autoptr(GArray) failed_partly = g_array_new(FALSE, FALSE, sizeof(UsherIp));
  g_autoptr(GArray) down = g_array_new(FALSE, FALSE, sizeof(UsherIp)); /* by the ring's word */
  for (guint i = 0; i < sc->backends->len; i++)
    g_array_append_val(hosts, ((SimBackendSpec *)g_ptr_array_index(sc->backends, i))->ip);
  for (guint i = 0; i < sc->config->backends->len; i++) {
    const UsherBackendConfig *b = g_ptr_array_index(sc->config->backends, i);
    if (b->down)
      g_array_append_val(down, b->ip);
  }
  for (guint i = 0; i < sc->events->len; i++) {
    const SimScenarioEvent *ev = &g_array_index(sc->events, SimScenarioEvent, i);
    guint d = ev->director;
    char ip[USHER_IP_STRLEN] = "";
    if (ev->has_host)
      usher_ip_to_string(&ev->host, ip);
    switch (ev->kind) {
    case SIM_EV_DIRECTOR_CRASH: {
      if (!up[d])
        idle_warn(sc, ev, "director %u is down already", d);
      up[d] = FALSE;
      paused[d] = FALSE;
      guint n_up = 0;
      for (guint k = 0; k < sc->directors; k++)
        n_up += up[k];
      if (n_up == 0)
        idle_warn(sc, ev, "every director is down after it: no login is answered until one "
                          "restarts");
      break;
    }
    case SIM_EV_DIRECTOR_RESTART:
      if (up[d])
        idle_warn(sc, ev, "director %u is not down", d);
      up[d] = TRUE;
      break;
    case SIM_EV_DIRECTOR_PAUSE:
      if (!up[d] || paused[d] || partitioned)
        idle_warn(sc, ev, "%s", !up[d]     ? "the director is down"
                                : paused[d] ? "the director is paused already"
                                            : "a partition is in force (a pause is one too)");
      else
        paused[d] = TRUE;
      break;
    case SIM_EV_DIRECTOR_RESUME:
      if (!paused[d])
        idle_warn(sc, ev, "director %u is not paused", d);
      paused[d] = FALSE;
      break;
    case SIM_EV_HEAL:
      if (!partitioned)
        idle_warn(sc, ev, "there is no partition to heal");
      partitioned = FALSE;
      break;
    case SIM_EV_PARTITION:
      if (partitioned)
        idle_warn(sc, ev, "a partition is in force already: this one replaces it");
      for (guint k = 0; k < sc->directors && !partitioned; k++)
        if (paused[k])
          idle_warn(sc, ev, "director %u is paused (a pause is a partition too; do not combine "
                            "them)", k);
      partitioned = TRUE;
      break;
    case SIM_EV_CLOCK_STEP:
      if (ev->value_us == 0)
        idle_warn(sc, ev, "a step of 0 changes nothing");
      break;
    case SIM_EV_HOST_ADD:
      if (!ip_in(hosts, &ev->host))
        g_array_append_val(hosts, ev->host);
      break;
    case SIM_EV_HOST_REMOVE:
      if (!ip_in(hosts, &ev->host))
        idle_warn(sc, ev, "%s is not a backend then (never added, or removed before)", ip);
      ip_drop(hosts, &ev->host);
      break;
    case SIM_EV_HOST_DOWN:
    case SIM_EV_HOST_UP:
    case SIM_EV_HOST_VHOSTS:
    case SIM_EV_MOVE:
      if (ev->has_host && !ip_in(hosts, &ev->host))
        idle_warn(sc, ev, "%s is not a backend then", ip);
      /* Health checks may change it meanwhile: then nobody can tell from here. */
      else if (ev->kind == SIM_EV_HOST_DOWN && ip_in(down, &ev->host) &&
               !sc->config->health_enabled)
        idle_warn(sc, ev, "%s is down already (the director answers OK and changes nothing)", ip);
      else if (ev->kind == SIM_EV_HOST_UP && !ip_in(down, &ev->host) &&
               !sc->config->health_enabled)
        idle_warn(sc, ev, "%s is up already (the director answers OK and changes nothing)", ip);
      if (ev->kind == SIM_EV_HOST_DOWN && !ip_in(down, &ev->host))
        g_array_append_val(down, ev->host);
      else if (ev->kind == SIM_EV_HOST_UP)
        ip_drop(down, &ev->host);
      break;
    case SIM_EV_FLUSH:
      if (ev->has_host && !ip_in(hosts, &ev->host))
        idle_warn(sc, ev, "%s is not a backend then", ip);
      break;
    case SIM_EV_BACKEND_FAIL:
      if (ev->from_mask == 0) {
        if (ip_in(failed, &ev->host))
          idle_warn(sc, ev, "%s has failed already", ip);
        else
          g_array_append_val(failed, ev->host);
      } else if (!ip_in(failed_partly, &ev->host)) {
        g_array_append_val(failed_partly, ev->host);
      }
      break;
    case SIM_EV_BACKEND_RECOVER:
      /* Without "from" it ends every failure of the backend, partial ones included. */
      if (!ip_in(failed, &ev->host) && !ip_in(failed_partly, &ev->host))
        idle_warn(sc, ev, "%s has not failed", ip);
      if (ev->from_mask == 0) {
        ip_drop(failed, &ev->host);
        ip_drop(failed_partly, &ev->host);
      }
      break;
    default:
      break;
    }
    if (ev->at_us == sc->duration_us)
      idle_warn(sc, ev, "it is at the run's end: nothing after it is seen");
    if ((ev->kind == SIM_EV_HOST_DOWN || ev->kind == SIM_EV_HOST_UP ||
         ev->kind == SIM_EV_HOST_VHOSTS || ev->kind == SIM_EV_HOST_ADD ||
         ev->kind == SIM_EV_HOST_REMOVE || ev->kind == SIM_EV_FLUSH || ev->kind == SIM_EV_MOVE ||
         ev->kind == SIM_EV_KICK) &&
        d < SIM_MAX_DIRECTORS && !up[d])
      idle_warn(sc, ev, "director %u, which it is sent to, is down then", d);
  }
}

SimScenario *
sim_scenario_load_file(const char *path, GError **error)
{
  g_autofree char *data = NULL;
  gsize len = 0;
  g_autoptr(GError) local = NULL;
  if (!g_file_get_contents(path, &data, &len, &local)) {
    g_set_error(error, SIM_SCENARIO_ERROR, 0, "%s: cannot read: %s", path, local->message);
    return NULL;
  }
  return sim_scenario_load_data(data, (gssize)len, path, error);
}

void
sim_scenario_free(SimScenario *sc)
{
  if (sc == NULL)
    return;
  g_free(sc->name);
  g_free(sc->description);
  g_free(sc->source);
  g_ptr_array_unref(sc->backends);
  usher_config_free(sc->config);
  g_free(sc->user_prefix);
  g_free(sc->user_suffix);
  g_free(sc->tag);
  for (guint i = 0; i < sc->n_tags; i++)
    g_free(sc->tags[i]);
  g_array_unref(sc->events);
  g_array_unref(sc->checks);
  g_clear_pointer(&sc->warnings, g_ptr_array_unref);
  g_free(sc);
}
