/* ring-codec.h - the director ring protocol (Dovecot 2.3, protocol 1.9) on the wire: escaping,
 * line framing, parsing lines into typed messages and formatting messages into lines.
 *
 * Sans-I/O and stateless apart from the line reader's buffer. The connection state machine is
 * built on top; it supplies the little context the wire format needs (see UsherRingParseFlags and
 * the `minor` argument of usher_ring_msg_format()).
 *
 * Framing and limits (checked against Dovecot 2.3 src/director/director-connection.c,
 * src/lib/istream.c, src/lib/strescape.c, src/lib/strnum.c, src/lib/net.c):
 *
 * - A line ends with "\n". One "\r" just before the "\n" is removed (i_stream_next_line()).
 * - Dovecot reads a ring connection through an input stream whose buffer is MAX_INBUF_SIZE = 1024
 *   bytes. Unconsumed bytes of the current line can fill the whole buffer, and the next read on a
 *   full buffer fails ("Director sent us more than 1024 bytes", disconnect). A line therefore
 *   fits iff the line *including* its "\n" is at most 1024 bytes: at most 1023 bytes before the
 *   "\n" (a "\r" there counts, it is stripped only after framing). USHER_RING_LINE_MAX = 1023.
 *   1023 content bytes + "\n" is accepted; 1024 content bytes is refused. Dovecot notices the
 *   overflow only when the 1025th byte arrives; our reader reports it as soon as 1024 bytes without
 *   "\n" are buffered. Such a line can never complete, so the outcome (disconnect) is the same.
 * - The line is then a C string for Dovecot: a raw NUL byte ends the line, and every byte after it
 *   is ignored. usher_ring_msg_parse() does the same.
 * - An empty line (nothing, or only "\r", before "\n") is an error ("Received empty line"). A line
 *   whose command is empty (e.g. "\tx") is an unknown command.
 *
 * Escaping (str_tabescape / str_tabunescape; t_strsplit_tabescaped_inplace()):
 *
 * - Fields are split on every TAB first, then each field is unescaped: "\001" followed by '1',
 *   't', 'r', 'n', '0' gives 0x01, TAB, CR, LF, NUL. "\001" followed by any other byte X gives X
 *   ("\001x" -> "x", "\001\001" -> 0x01). A "\001" at the end of a field (end of line, or just
 *   before a TAB, which still separates fields) is dropped.
 * - Fields are C strings for Dovecot, so an escaped NUL ("\0010") ends that field's value; the
 *   rest of the field up to the next TAB is ignored. The parser does the same.
 * - Every field is unescaped, numbers and IPs included, exactly as Dovecot does.
 * - The formatter escapes every free-text field (tags, hostnames, USER-KICK user names,
 *   USER-KICK-ALT field and value, QUIT reasons, OPTIONS tokens): 0x01, TAB, CR, LF (and NUL when
 *   a length is given to usher_ring_escape_append()). Dovecot writes QUIT reasons and OPTIONS
 *   unescaped; escaping them is harmless because the receiver unescapes every field.
 *
 * Field syntax, exactly as tolerant as Dovecot:
 *
 * - Unsigned numbers (hashes, seqs, vhost counts, minor/major, SYNC fields, U timestamps,
 *   HOST-HAND-START): str_to_uint: one or more ASCII digits, leading zeros allowed, no sign, no
 *   spaces, at most 4294967295.
 * - Signed times (ME time, USER timestamp, the HOST up/down time after 'U'/'D', PING/PONG time):
 *   str_to_time: an optional '-', then digits; 64-bit range. PING/PONG buffer sizes: 64-bit
 *   unsigned.
 * - Ports: net_str2port: 1..65535 (0 is refused).
 * - IPs: usher_ip_parse(). This is the one place we are stricter than Dovecot: its net_addr2ip()
 *   also takes inet_aton() forms ("127.1", "2130706433", "0x7f.0.0.1", leading zeros, trailing
 *   blanks). Directors only ever send inet_ntop() text, which both accept.
 * - Extra trailing fields: ignored where Dovecot ignores them (VERSION, ME, DIRECTOR,
 *   DIRECTOR-REMOVE, HOST-HAND-START/END, both HOST forms, USER, U, SYNC, PING, PONG, DONE) and
 *   refused (USHER_RING_PARSE_EXTRA_FIELD) where Dovecot checks the exact count (HOST-REMOVE,
 *   HOST-FLUSH, USER-WEAK, USER-MOVE, USER-KICK, USER-KICK-ALT, USER-KICK-HASH, USER-KILLED,
 *   USER-KILLED-EVERYWHERE, CONNECT). PING/PONG with missing or malformed arguments are accepted
 *   (values then absent), as Dovecot does. HOST-HAND-END's argument is not checked at all.
 *
 * What is left to the state machine (Dovecot checks these by connection state, not syntax):
 * which commands are allowed when (VERSION first, then ME; only HOST and HOST-HAND-END inside the
 * host list; U only on incoming connections during the handshake; VERSION after the handshake is
 * an unknown command), the VERSION major (must be 1), ME naming the dialled peer, tags from peers
 * below minor 7, OPTIONS lacking "consistent-hashing".
 */
#pragma once

#include "libcore/ip.h"

G_BEGIN_DECLS

#define USHER_RING_PROTOCOL_NAME "director"
#define USHER_RING_VERSION_MAJOR 1
#define USHER_RING_VERSION_MINOR 9

/* Feature gates by minor version (Dovecot src/director/director.h, spec section 4.12). */
#define USHER_RING_MINOR_USER_WEAK 1
#define USHER_RING_MINOR_RING_REMOVE 2 /* DIRECTOR-REMOVE */
#define USHER_RING_MINOR_QUIT 3
#define USHER_RING_MINOR_USER_KICK 4 /* USER-KICK, USER-KICK-HASH */
#define USHER_RING_MINOR_OPTIONS 5
#define USHER_RING_MINOR_TAGS 5
#define USHER_RING_MINOR_UPDOWN 6 /* up/down state and hostname in HOST */
#define USHER_RING_MINOR_TAGS_V2 7
#define USHER_RING_MINOR_USER_KICK_ALT 8
#define USHER_RING_MINOR_HANDSHAKE_U 9    /* handshake users sent as U */
#define USHER_RING_MINOR_USER_TIMESTAMP 9 /* USER carries a timestamp */

/* Dovecot's ring input buffer (MAX_INBUF_SIZE) and the longest line it accepts: bytes before the
 * "\n", a trailing "\r" included. See the framing notes above. */
#define USHER_RING_INBUF_SIZE 1024
#define USHER_RING_LINE_MAX (USHER_RING_INBUF_SIZE - 1)

#define USHER_RING_OPTION_CONSISTENT_HASHING "consistent-hashing"
/* Usher's ring extension, version 1 (doc/ring-protocol.md, "Usher's extension"): announced as an
 * extra OPTIONS token, which Dovecot 2.3 ignores (director_handshake_cmd_options() only looks for
 * consistent-hashing). Extension commands (X-USHER-*) go only to peers that announced it. */
#define USHER_RING_OPTION_USHER_EXT "x-usher-1"
/* X-USHER-HEALTH list fields: at most this many entries each (the line must stay within
 * USHER_RING_LINE_MAX; a sender that has more sets complete = FALSE). */
#define USHER_RING_HEALTH_LIST_MAX 32

/* ---- Escaping ---------------------------------------------------------------------------- */

/* Appends data tab-escaped. len < 0: data is NUL-terminated. With an explicit length, NUL bytes
 * are escaped as "\0010" (Dovecot's str_append_tabescaped_n()). */
void usher_ring_escape_append(GString *out, const char *data, gssize len);

/* Unescapes len bytes in place (str_tabunescape semantics, see above; "\0010" yields a NUL byte).
 * Returns the new length; data[new length] is not written. TABs are not separators here. */
gsize usher_ring_unescape_inplace(char *data, gsize len);

/* ---- Line reader ------------------------------------------------------------------------- */

typedef struct UsherLineReader UsherLineReader;

typedef enum {
  USHER_LINE_NEED_MORE = 0, /* no complete line is buffered; feed more bytes */
  USHER_LINE_OK,            /* a line was returned */
  USHER_LINE_TOO_LONG,      /* a line exceeded the limit; sticky until the reader is freed */
} UsherLineResult;

typedef struct {
  guint64 bytes_in;        /* bytes fed, including discarded ones */
  guint64 lines;           /* lines returned */
  guint64 too_long;        /* 0 or 1: the reader stops at the first overlong line */
  guint64 bytes_discarded; /* bytes dropped because of the error (buffered or fed later) */
} UsherLineReaderStats;

/* max_line_len: the most bytes a line may have before its "\n" (a "\r" there included). Use
 * USHER_RING_LINE_MAX for the ring. Must be > 0. */
UsherLineReader *usher_line_reader_new(gsize max_line_len);
void usher_line_reader_free(UsherLineReader *reader);

/* Buffers a chunk of any size (0 allowed). After an error the bytes are discarded and counted.
 * The buffer holds what was fed and not yet returned: call usher_line_reader_next() until it
 * stops returning USHER_LINE_OK after every feed. */
void usher_line_reader_feed(UsherLineReader *reader, const void *data, gsize len);

/* On USHER_LINE_OK: *line_out (transfer none) points into the reader's buffer, holds *len_out
 * bytes without the "\n" and without one "\r" before it, and is NUL-terminated at [*len_out]. The
 * bytes are writable (usher_ring_msg_parse() works in place) and stay valid until the next call
 * to feed or free. The line may contain NUL bytes.
 * USHER_LINE_TOO_LONG: the current line cannot fit; the buffered input is dropped and the reader
 * returns USHER_LINE_TOO_LONG from now on. The caller disconnects. Splitting the input into
 * chunks at any offsets gives the same sequence of results. */
UsherLineResult usher_line_reader_next(UsherLineReader *reader, char **line_out, gsize *len_out);

/* Bytes buffered and not yet returned as lines. */
gsize usher_line_reader_get_pending(const UsherLineReader *reader);
gboolean usher_line_reader_failed(const UsherLineReader *reader);
void usher_line_reader_get_stats(const UsherLineReader *reader, UsherLineReaderStats *stats_out);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(UsherLineReader, usher_line_reader_free)

/* ---- Messages ---------------------------------------------------------------------------- */

typedef enum {
  USHER_RING_MSG_NONE = 0,
  USHER_RING_MSG_VERSION,
  USHER_RING_MSG_ME,
  USHER_RING_MSG_DIRECTOR,
  USHER_RING_MSG_DIRECTOR_REMOVE,
  USHER_RING_MSG_HOST_HAND_START,
  USHER_RING_MSG_HOST_HAND_END,
  USHER_RING_MSG_HOST_HANDSHAKE, /* "HOST" between HOST-HAND-START and HOST-HAND-END */
  USHER_RING_MSG_HOST,           /* "HOST" anywhere else: the flooded form with an origin */
  USHER_RING_MSG_HOST_REMOVE,
  USHER_RING_MSG_HOST_FLUSH,
  USHER_RING_MSG_USER,
  USHER_RING_MSG_U, /* handshake user: "U", or "USER" read with USHER_RING_PARSE_LEGACY_USER */
  USHER_RING_MSG_USER_WEAK,
  USHER_RING_MSG_USER_MOVE,
  USHER_RING_MSG_USER_KILLED,
  USHER_RING_MSG_USER_KILLED_EVERYWHERE,
  USHER_RING_MSG_USER_KICK,
  USHER_RING_MSG_USER_KICK_ALT,
  USHER_RING_MSG_USER_KICK_HASH,
  USHER_RING_MSG_SYNC,
  USHER_RING_MSG_CONNECT,
  USHER_RING_MSG_PING,
  USHER_RING_MSG_PONG,
  USHER_RING_MSG_QUIT,
  USHER_RING_MSG_OPTIONS,
  USHER_RING_MSG_DONE,
  USHER_RING_MSG_X_USHER_HEALTH, /* extension: a director's backend health report (flooded) */
} UsherRingMsgType;

#define USHER_RING_MSG_TYPE_LAST USHER_RING_MSG_X_USHER_HEALTH

/* A director's identity on the ring. */
typedef struct {
  UsherIp ip;
  guint16 port;
} UsherRingAddr;

/* The origin triple of flooded, sequenced commands (spec section 4.5). */
typedef struct {
  UsherIp ip;
  guint16 port;
  guint32 seq;
} UsherRingOrigin;

/* A parsed or to-be-formatted message. String fields are never NULL. After parsing they point
 * into the parsed line (transfer none): copy what must outlive it. A message can be copied by
 * value; the copy borrows the same strings. */
typedef struct {
  UsherRingMsgType type;
  union {
    /* VERSION\tdirector\t<major>\t<minor>. The protocol name is checked by the parser. */
    struct {
      guint32 major;
      guint32 minor;
    } version;
    /* ME\t<ip>\t<port>[\t<unix time>] */
    struct {
      UsherRingAddr addr;
      gboolean has_time;
      gint64 time;
    } me;
    /* DIRECTOR, DIRECTOR-REMOVE, CONNECT: <ip>\t<port> */
    UsherRingAddr director;
    /* HOST-HAND-START / HOST-HAND-END: <0|1>. Any non-zero number means TRUE (Dovecot). */
    struct {
      gboolean ring_handshaked;
    } host_hand;
    /* HOST (flood): <origin>\t<ip>\t<vhosts>[\t<tag>[\t<U|D><time>[\t<hostname>]]]
     * HOST_HANDSHAKE: the same without the origin. Absent fields read as their Dovecot defaults:
     * tag "", up, time 0, hostname "" (which is also how Dovecot writes a missing hostname). */
    struct {
      UsherRingOrigin origin; /* HOST only */
      UsherIp ip;
      guint32 vhost_count;
      const char *tag;
      gboolean down;
      gint64 last_updown_change;
      const char *hostname;
    } host;
    /* HOST-REMOVE, HOST-FLUSH: <origin>\t<ip> */
    struct {
      UsherRingOrigin origin;
      UsherIp ip;
    } host_ref;
    /* USER\t<hash>\t<ip>[\t<timestamp>]. Without a timestamp (peers below minor 9) Dovecot uses
     * "now" and a refresh-skip rule (spec 4.6.2). */
    struct {
      guint32 hash;
      UsherIp ip;
      gboolean has_timestamp;
      gint64 timestamp;
    } user;
    /* U\t<hash>\t<ip>\t<timestamp>[\tw]. weak: a fourth field starting with 'w'. */
    struct {
      guint32 hash;
      UsherIp ip;
      guint32 timestamp;
      gboolean weak;
    } handshake_user;
    /* USER-WEAK, USER-MOVE: <origin>\t<hash>\t<host ip>;
     * USER-KICK-HASH: <origin>\t<hash>\t<except ip> */
    struct {
      UsherRingOrigin origin;
      guint32 hash;
      UsherIp ip;
    } user_ref;
    /* USER-KILLED\t<hash> */
    struct {
      guint32 hash;
    } user_killed;
    /* USER-KILLED-EVERYWHERE\t<origin>\t<hash> */
    struct {
      UsherRingOrigin origin;
      guint32 hash;
    } user_killed_everywhere;
    /* USER-KICK\t<origin>\t<username> */
    struct {
      UsherRingOrigin origin;
      const char *username;
    } user_kick;
    /* USER-KICK-ALT\t<origin>\t<field>\t<value> */
    struct {
      UsherRingOrigin origin;
      const char *field;
      const char *value;
    } user_kick_alt;
    /* SYNC\t<ip>\t<port>\t<seq>[\t<minor>\t<timestamp>\t<hosts_hash>]. An absent minor or
     * hosts_hash reads as 0, which Dovecot treats the same as absent; an absent timestamp means
     * "use now" to Dovecot, hence the flag. */
    struct {
      UsherRingAddr addr;
      guint32 seq;
      guint32 minor;
      gboolean has_timestamp;
      guint32 timestamp;
      guint32 hosts_hash;
    } sync;
    /* PING, PONG: [<unix time>\t<output buffer bytes>]. has_values only if both parse. */
    struct {
      gboolean has_values;
      gint64 time;
      guint64 buffer_bytes;
    } ping;
    /* QUIT[\t<reason>]. Dovecot joins all fields with spaces; so does the parser. */
    struct {
      const char *reason;
    } quit;
    /* OPTIONS[\t<token>]*. tokens: n_tokens NUL-terminated strings stored back to back (read
     * them with usher_ring_options_next()). consistent_hashing: one of them is
     * "consistent-hashing"; the parser sets it, the formatter ignores it. */
    struct {
      const char *tokens;
      guint n_tokens;
      gboolean consistent_hashing;
      gboolean usher_ext; /* one of them is USHER_RING_OPTION_USHER_EXT (parser only) */
    } options;
    /* X-USHER-HEALTH\t<ip>\t<port>\t<boot>\t<seq>\t<interval ms>\t<failing>\t<downs>\t<0|1>
     * The reporting director (ip, port), the UNIX second it started (boot) and a per-boot
     * sequence number: receivers keep the newest (boot, seq) per reporter and flood only that.
     * interval: how often it reports. failing: the backends it sees failing, comma-separated, or
     * "-". downs: backends taken down by a health decision, as <ip>/<up-down time>, or "-".
     * Last field 1 when both lists are complete. */
    struct {
      UsherRingAddr addr;
      guint32 boot;
      guint32 seq;
      guint32 interval_ms;
      const char *failing; /* "-" or the list; read with usher_ring_health_next() */
      const char *downs;
      guint n_failing, n_downs; /* entries in each (the parser checks every one) */
      gboolean complete;
    } health;
  };
} UsherRingMsg;

/* Zeroes *msg, sets its type and every string field to "". */
void usher_ring_msg_init(UsherRingMsg *msg, UsherRingMsgType type);

/* The command word ("HOST", "USER-KICK-ALT", ...). HOST_HANDSHAKE gives "HOST", U gives "U". */
const char *usher_ring_msg_type_to_string(UsherRingMsgType type);

/* Field-by-field comparison of the fields meaningful for the type (strings by content). */
gboolean usher_ring_msg_equal(const UsherRingMsg *a, const UsherRingMsg *b);

/* Iterates OPTIONS tokens: *cursor starts at msg->options.tokens; call n_tokens times. */
const char *usher_ring_options_next(const char **cursor);

/* Iterates an X-USHER-HEALTH list of a parsed message: *cursor starts at msg->health.failing
 * (or .downs); each call gives the next entry's IP (and, for downs, its time in *time_out, which
 * may be NULL); FALSE at the end. */
gboolean usher_ring_health_next(const char **cursor, UsherIp *ip_out, gint64 *time_out);

/* ---- Parsing ----------------------------------------------------------------------------- */

typedef enum {
  USHER_RING_PARSE_OK = 0,
  USHER_RING_PARSE_EMPTY,           /* an empty line */
  USHER_RING_PARSE_TOO_LONG,        /* more than USHER_RING_LINE_MAX bytes */
  USHER_RING_PARSE_UNKNOWN_COMMAND, /* includes an empty command word */
  USHER_RING_PARSE_MISSING_FIELD,
  USHER_RING_PARSE_EXTRA_FIELD, /* the command takes an exact number of fields */
  USHER_RING_PARSE_BAD_NUMBER,
  USHER_RING_PARSE_BAD_IP,
  USHER_RING_PARSE_BAD_PORT,
  USHER_RING_PARSE_BAD_VALUE, /* VERSION protocol name, HOST up/down field */
} UsherRingParseResult;

typedef enum {
  USHER_RING_PARSE_FLAGS_NONE = 0,
  /* The connection is between HOST-HAND-START and HOST-HAND-END: "HOST" is the handshake form
   * (USHER_RING_MSG_HOST_HANDSHAKE). Otherwise it is the flood form. Dovecot decides the same
   * way, by connection state; the two shapes cannot be told apart reliably by their fields. */
  USHER_RING_PARSE_HOST_LIST = 1 << 0,
  /* Incoming connection, handshake not finished, peer minor < 9: a "USER" with more than two
   * fields is a handshake user (USHER_RING_MSG_U; timestamp parsed as unsigned, optional 'w').
   * Dovecot's CMD_IS_USER_HANDSHAKE rule. */
  USHER_RING_PARSE_LEGACY_USER = 1 << 1,
} UsherRingParseFlags;

/* Parses one line (without "\n"; one trailing "\r" is not stripped here, the reader does that).
 * The line is modified in place (split and unescaped) and must have len + 1 writable bytes
 * (line[len] may be overwritten with NUL); lines from UsherLineReader qualify. On success the
 * message's strings point into line. On failure *msg_out is zeroed (type NONE). Never asserts on
 * any input. */
UsherRingParseResult usher_ring_msg_parse(char *line, gsize len, UsherRingParseFlags flags,
                                          UsherRingMsg *msg_out);

const char *usher_ring_parse_result_to_string(UsherRingParseResult result);

/* ---- Formatting -------------------------------------------------------------------------- */

typedef enum {
  USHER_RING_FORMAT_OK = 0,
  /* The line would be longer than USHER_RING_LINE_MAX: a Dovecot peer would disconnect. */
  USHER_RING_FORMAT_TOO_LONG,
  /* Not sendable at this minor version: DIRECTOR-REMOVE below 2, QUIT below 3, USER-KICK and
   * USER-KICK-HASH below 4, OPTIONS below 5, USER-KICK-ALT below 8, a HOST (either form) with a
   * non-empty tag below 7 (Dovecot drops such a host from a flood; it refuses such a peer before
   * the handshake HOSTs are sent). */
  USHER_RING_FORMAT_UNSUPPORTED,
  /* SYNC with minor > 0 for a peer with minor > 0 needs the timestamp, and it is absent. */
  USHER_RING_FORMAT_INCOMPLETE,
} UsherRingFormatResult;

/* Appends msg as one line ending in "\n" to out, in the byte-exact shape Dovecot 2.3 sends.
 * minor is the version that selects the shape:
 * - the peer's minor for everything sent on one connection (and for the flood gates above);
 * - for a flooded HOST, Dovecot uses the ring-wide minimum minor (ring_min_version): pass that.
 * Shapes: HOST_HANDSHAKE: tag if non-empty or minor >= 6, then "\t<U|D><time>\t<hostname>" if
 * minor >= 6. HOST: tag if minor >= 7, then "\t<U|D><time>\t<hostname>" if minor >= 6 (at
 * exactly 6 this puts the up/down field where a newer peer reads the tag; that is Dovecot's own
 * output). USER: the timestamp only if minor >= 9 and present. U: "U" if minor >= 9, else "USER".
 * SYNC: the three extra fields only if msg minor > 0 and minor > 0 (so a SYNC whose minor is 0 is
 * forwarded without its timestamp and hosts_hash, as Dovecot does). QUIT: "QUIT" alone if the
 * reason is empty.
 * On any result but OK, out is left unchanged. Programmer errors (NULL strings, an IP without a
 * family, type NONE) assert. */
UsherRingFormatResult usher_ring_msg_format(const UsherRingMsg *msg, guint minor, GString *out);

const char *usher_ring_format_result_to_string(UsherRingFormatResult result);

G_END_DECLS
