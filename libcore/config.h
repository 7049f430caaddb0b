/* config.h - the configuration model shared by usherd and ushersim, and its validation.
 *
 * Parsing works on bytes already in memory (GKeyFile format); reading the file is the driver's
 * job (common/config-file.c), so libcore stays free of file access. Every error names the source
 * (file name), the [group] and key, and the problem. Unknown groups and keys are errors.
 * doc/configuration.md documents every setting with its default and unit.
 */
#pragma once

#include "libcore/ip.h"
#include "libcore/user-hash.h"

G_BEGIN_DECLS

#define USHER_CONFIG_ERROR (usher_config_error_quark())
GQuark usher_config_error_quark(void);

typedef enum {
  USHER_CONFIG_ERROR_SYNTAX,        /* not a valid key file */
  USHER_CONFIG_ERROR_UNKNOWN_GROUP, /* a [group] Usher does not know */
  USHER_CONFIG_ERROR_UNKNOWN_KEY,   /* a key Usher does not know in a known group */
  USHER_CONFIG_ERROR_INVALID,       /* a value that does not parse or is out of range */
  USHER_CONFIG_ERROR_CONFLICT,      /* values that contradict each other (e.g. duplicate backend) */
} UsherConfigError;

#define USHER_DIRECTOR_PORT_DEFAULT 9090
#define USHER_CONFIG_MAX_DIRECTORS 256
#define USHER_CONFIG_MAX_BYTES (16 * 1024 * 1024) /* larger input is refused unparsed */

typedef struct {
  UsherIp ip;
  guint16 port;
} UsherDirectorAddr;

/* [health] probe: what usherd checks on each backend. */
typedef enum {
  USHER_HEALTH_PROBE_TCP = 0, /* a TCP connect to imap_port */
  USHER_HEALTH_PROBE_IMAP,    /* imap_port: "* OK" greeting (and LOGIN with probe_user) */
  USHER_HEALTH_PROBE_POP3,    /* pop3_port: "+OK" greeting (and USER/PASS with probe_user) */
  USHER_HEALTH_PROBE_LMTP,    /* lmtp_port: "220" greeting, LHLO answered with 250 */
} UsherHealthProbe;

typedef struct {
  UsherIp ip;
  char *tag;      /* never NULL; "" = default tag */
  char *hostname; /* NULL when not set */
  guint vhost_count;
  gboolean down;
  gint64 updown_change; /* UNIX seconds of the last up/down change; 0 from a configuration file */
} UsherBackendConfig;

typedef struct {
  /* [director] */
  char *username_hash;          /* format text, default "%Lu" */
  UsherHashFormat *hash_format; /* compiled username_hash */
  guint user_expire_secs;       /* default 900, minimum 10 */
  guint user_kick_delay_secs;   /* default 2 */
  guint max_parallel_moves;     /* default 100, >= 1 */
  guint max_parallel_kicks;     /* default 100, >= 1 */
  char *flush_socket;           /* "" = none; else unix:PATH, tcp:HOST:PORT or exec:PATH */
  guint ping_idle_timeout_secs; /* default 30 */
  guint ping_max_timeout_secs;  /* default 60 */
  guint usher_ping_timeout_secs; /* links between usherd directors; default 2 */
  guint64 output_buffer_size;   /* bytes, default 10 MiB */
  char *master_user_separator;  /* "" = none; else one character */
  /* [ring] */
  GArray *directors; /* UsherDirectorAddr, sorted by (ip, port), no duplicates */
  /* [backends] hosts = ..., and [backend IP] groups */
  GPtrArray *backends; /* UsherBackendConfig*, sorted by ip, no duplicates */
  /* The backends USER-LOOKUP's "initial config" answer and HOST-LIST-REMOVED compare with:
   * NULL means backends. usherd sets it when runtime state replaces backends at start. */
  GPtrArray *initial_backends;
  /* [daemon]: usherd only (the simulator ignores it) */
  gboolean has_ring_address;
  UsherDirectorAddr ring_address; /* this director; one of directors */
  char *admin_socket;             /* path, default USHER_ADMIN_SOCKET_DEFAULT */
  guint admin_socket_mode;        /* default 0600 */
  char *admin_socket_user;        /* "" = leave as created */
  char *admin_socket_group;       /* "" = leave as created */
  gboolean has_admin_listen;
  UsherDirectorAddr admin_listen; /* an optional TCP admin listener */
  guint admin_max_clients;        /* default 32 */
  guint admin_idle_timeout_secs;  /* default 120: a client silent that long is closed */
  char *state_dir;                /* "" = keep nothing across restarts; default USHER_STATE_DIR_DEFAULT */
  guint users_snapshot_interval_secs; /* default 300; 0 = only at a clean stop */
  /* [backends] ports: where the backends' services listen (usherd's proxy, nginx auth_http) */
  guint16 backend_imap_port, backend_pop3_port, backend_smtp_port, backend_lmtp_port;
  guint16 backend_sieve_port, backend_submission_port;
  /* [http]: usherd's HTTP listener (metrics, placement lookups); the simulator ignores it */
  gboolean has_http_listen;
  UsherDirectorAddr http_listen;
  guint http_max_pending_lookups; /* default 10000 */
  /* [proxy]: usherd's IMAP/POP3 proxy */
  GArray *imap_listen; /* UsherDirectorAddr */
  GArray *pop3_listen; /* UsherDirectorAddr */
  GArray *imaps_listen; /* UsherDirectorAddr: IMAP over TLS from the first byte */
  GArray *pop3s_listen; /* UsherDirectorAddr: POP3 over TLS from the first byte */
  char *tls_cert;       /* PEM certificate chain path; "" = no TLS (no STARTTLS/STLS either) */
  char *tls_key;        /* PEM private key path */
  guint tls_min_version; /* 12 (TLS 1.2, default) or 13 */
  GPtrArray *tls_sni;    /* UsherTlsSni*: certificates by the name a client asks for (SNI) */
  guint proxy_workers; /* 0 = one per CPU */
  guint proxy_max_connections;
  guint proxy_max_connections_per_ip;
  guint proxy_login_timeout_secs;
  guint proxy_max_bad_commands;
  guint proxy_shutdown_timeout_secs; /* SIGTERM: sessions may finish for this long; default 30 */
  char *proxy_greeting;
  guint proxy_auth_mechs;          /* bit 1 << UsherSaslMech per mechanism offered; default
                                    * PLAIN and LOGIN */
  GArray *trusted_proxies;         /* UsherNet: clients that must start with a PROXY header */
  GArray *lmtp_listen;       /* UsherDirectorAddr: LMTP over TCP */
  GArray *sieve_listen;      /* UsherDirectorAddr: ManageSieve (STARTTLS offered with tls_cert) */
  GArray *submission_listen; /* UsherDirectorAddr: submission (STARTTLS offered with tls_cert) */
  GArray *submissions_listen; /* UsherDirectorAddr: submission over TLS from the first byte */
  char *lmtp_socket;         /* LMTP on a UNIX socket at this path; "" = none */
  char *lmtp_user_format;    /* recipient address (detail cut) -> user name; default "%u" */
  char *recipient_delimiter; /* bytes that start an address's detail; default "+" */
  char *lmtp_spool_dir;      /* where a message for a slow backend is spooled; "" = nowhere */
  guint64 lmtp_spool_max;    /* bytes spooled per backend and message; default 256 MiB */
  GArray *proxy_protocol_backends; /* UsherNet: backends that get a PROXY v2 header */
  /* [health]: backend health checks (doc/health.md) */
  gboolean health_enabled;       /* default FALSE */
  guint health_interval_secs;    /* default 2 */
  guint health_timeout_secs;     /* one probe; default 2 */
  guint health_fall;             /* failing after this many failed probes in a row; default 3 */
  guint health_rise;             /* healthy after this many good probes in a row; default 2 */
  guint health_quorum;           /* directors needed for a decision; 0 = a majority (default) */
  gboolean health_down_replace;  /* a down backend's users are re-placed at once (default) */
  UsherHealthProbe health_probe; /* default USHER_HEALTH_PROBE_IMAP */
  char *health_probe_user;       /* "" = no login in the probe */
  char *health_probe_password;
} UsherConfig;

#define USHER_CONFIG_MAX_NETS 1024 /* networks in one list */
#define USHER_CONFIG_MAX_SNI 1024  /* tls_sni entries */

/* One [proxy] tls_sni entry: NAME:CERT[:KEY]. */
typedef struct {
  char *name; /* lower case; "*.example.org" matches one more label in front */
  char *cert; /* absolute path, PEM chain */
  char *key;  /* absolute path; the cert file itself when the entry names no key */
} UsherTlsSni;

#define USHER_ADMIN_SOCKET_DEFAULT "/run/usherd/director-admin"
#define USHER_STATE_DIR_DEFAULT "/var/lib/usherd"

/* The defaults, with no backends and no directors. */
UsherConfig *usher_config_new(void);
void usher_config_free(UsherConfig *config);

/* Parse and validate key-file text. source names the input in error messages (a file name). */
UsherConfig *usher_config_parse(const char *data, gsize len, const char *source, GError **error);

/* The backend list grammar shared by "[backends] hosts" and "ushersim map --backends":
 * elements separated by commas and/or whitespace, each IP[-IP][=VHOSTS][@TAG]. IP-IP is a range
 * (IPv4: same first three octets; IPv6: same first 112 bits). VHOSTS is 0..1000 (default 100).
 * Appends UsherBackendConfig* to out (which must free with usher_backend_config_free). Errors
 * quote the bad element and its position. */
gboolean usher_backends_parse(const char *text, GPtrArray *out, GError **error);

UsherBackendConfig *usher_backend_config_new(const UsherIp *ip, const char *tag, guint vhosts);
/* A [backend IP] hostname: 1 to USHER_HOSTNAME_MAX_LEN letters, digits, '.', '-' and '_'. */
gboolean usher_hostname_valid(const char *name);
/* A tag name: 1 to USHER_TAG_MAX_LEN letters, digits, '.', '_' or '-'. */
gboolean usher_tag_valid(const char *s, gsize len);
void usher_backend_config_free(UsherBackendConfig *backend);

/* A director address as [ring] directors writes one: IP, IP:PORT, [IPv6]:PORT; a bare IP takes
 * default_port. For command-line options; errors quote the text. */
gboolean usher_config_parse_address(const char *text, guint16 default_port,
                                    UsherDirectorAddr *addr_out, GError **error);

/* Durations ("15m", "900", "2 s", "1h30m") and sizes ("10M", "64k", "1048576"). */
gboolean usher_parse_duration_secs(const char *text, guint64 *secs_out);
gboolean usher_parse_size_bytes(const char *text, guint64 *bytes_out);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherConfig, usher_config_free)
G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherBackendConfig, usher_backend_config_free)

G_END_DECLS
