#!/bin/bash
# test-ushersim-map.sh - the "ushersim map" command line, end to end (TAP output).
set -u
sim=${USHERSIM:?run through meson test}
data=${USHER_TEST_DATA:?run through meson test}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { if eval "$2"; then ok "$1"; else not_ok "$1"; fi; }

# The two reference tables from a real Dovecot 2.3.19.1 ring: users, hashes and backends.
awk '/^# hosts: /{t++} /^user/{print > ("'"$tmp"'/ref" t ".txt")}' "$data/dovecot-mapping-user1-1000.txt"
cut -d' ' -f1 "$tmp/ref1.txt" > "$tmp/users.txt"
tr ' ' '\t' < "$tmp/ref1.txt" > "$tmp/want1.tsv"
tr ' ' '\t' < "$tmp/ref2.txt" > "$tmp/want2.tsv"
"$sim" map --backends 127.0.2.1,127.0.2.2,127.0.2.3 --users "$tmp/users.txt" > "$tmp/got1.tsv" 2> "$tmp/err"
check "table 1 (3 x 100 vhosts) matches Dovecot byte for byte" 'cmp -s "$tmp/want1.tsv" "$tmp/got1.tsv"'
"$sim" map --backends "127.0.2.1=50 127.0.2.2=100, 127.0.2.3=200" < "$tmp/users.txt" > "$tmp/got2.tsv"
check "table 2 (50/100/200 vhosts) matches Dovecot, input on stdin" 'cmp -s "$tmp/want2.tsv" "$tmp/got2.tsv"'

# Empty lines are reported with their number; CRLF endings and inner/outer spaces are kept apart.
printf 'user1\n\nUser1\r\n  user1 \n\r\nlast-no-newline' > "$tmp/odd.txt"
"$sim" map --backends 127.0.2.1,127.0.2.2,127.0.2.3 --users "$tmp/odd.txt" > "$tmp/odd.out" 2> "$tmp/odd.err"
status=$?
check "odd input exits 0" '[ $status -eq 0 ]'
check "empty line 2 reported" 'grep -q "odd.txt:2: empty line skipped" "$tmp/odd.err"'
check "CRLF empty line 5 reported" 'grep -q "odd.txt:5: empty line skipped" "$tmp/odd.err"'
check "four users placed" '[ $(wc -l < "$tmp/odd.out") -eq 4 ]'
check "CRLF stripped, %Lu lowercases" '[ "$(sed -n 2p "$tmp/odd.out")" = "$(printf "User1\t617210206\t127.0.2.2")" ]'
check "spaces kept" '[ "$(sed -n 3p "$tmp/odd.out" | cut -f1)" = "  user1 " ]'
check "last line without newline kept" 'grep -q "^last-no-newline	" "$tmp/odd.out"'

# Bad --backends: exit 2, the message points at the element.
"$sim" map --backends "127.0.2.1,127.0.2.x=5" < /dev/null > /dev/null 2> "$tmp/bad.err"
status=$?
check "bad --backends exits 2" '[ $status -eq 2 ]'
check "bad --backends names the element" 'grep -q "127.0.2.x" "$tmp/bad.err"'
"$sim" map --backends "127.0.2.1=1001" < /dev/null > /dev/null 2> "$tmp/bad2.err"
check "vhost count over 1000 refused" '[ $? -eq 2 ] && grep -q "1001" "$tmp/bad2.err"'
"$sim" map < /dev/null > /dev/null 2>&1
check "no backends at all exits 2" '[ $? -eq 2 ]'
"$sim" map --backends 127.0.2.1 --config /nonexistent < /dev/null > /dev/null 2>&1
check "both --config and --backends exits 2" '[ $? -eq 2 ]'
"$sim" map --backends 127.0.2.1 --tag nosuch < /dev/null > /dev/null 2> "$tmp/tag.err"
check "unknown tag exits 2 and says so" '[ $? -eq 2 ] && grep -q "nosuch" "$tmp/tag.err"'
"$sim" map --config /nonexistent/usher.conf < /dev/null > /dev/null 2> "$tmp/cfg.err"
check "missing config file exits 2 naming it" '[ $? -eq 2 ] && grep -q "/nonexistent/usher.conf" "$tmp/cfg.err"'

# Tags and down/vhost-0 hosts.
"$sim" map --backends "127.0.2.1@eu,127.0.2.2@eu,127.0.2.3" --tag eu < "$tmp/users.txt" > "$tmp/eu.tsv"
check "tag ring uses only its hosts" '! grep -q "127.0.2.3$" "$tmp/eu.tsv" && [ $(wc -l < "$tmp/eu.tsv") -eq 1000 ]'
"$sim" map --backends "127.0.2.1=0,127.0.2.2=0" < "$tmp/users.txt" > "$tmp/none.tsv" 2> "$tmp/none.err"
check "no usable host: empty backend column, warning" '[ "$(cut -f3 "$tmp/none.tsv" | sort -u)" = "" ] && grep -q "no usable backend" "$tmp/none.err"'

# Summary: totals add up, shares printed.
"$sim" map --backends 127.0.2.1,127.0.2.2,127.0.2.3 --summary < "$tmp/users.txt" > "$tmp/sum.txt"
check "summary lists 411/297/292 users like Dovecot" 'grep -Eq "^127.0.2.1 .* 411 " "$tmp/sum.txt" && grep -Eq "^127.0.2.2 .* 297 " "$tmp/sum.txt" && grep -Eq "^127.0.2.3 .* 292 " "$tmp/sum.txt"'
check "summary total 1000" 'grep -Eq "^total +1000$" "$tmp/sum.txt"'
check "summary vhost share 33.33%" 'grep -q "33.33%" "$tmp/sum.txt"'

# IPv6 backends and the other hash formats.
"$sim" map --backends "[2001:db8::1]=10,::ffff:10.0.0.1" < "$tmp/users.txt" > "$tmp/v6.tsv"
check "IPv6 backends, canonical text" '[ "$(cut -f3 "$tmp/v6.tsv" | sort -u | tr "\n" " ")" = "2001:db8::1 ::ffff:10.0.0.1 " ]'
echo "Alice@Example.COM" | "$sim" map --backends 127.0.2.1 --username-hash %Ld > "$tmp/fmt.tsv"
want=$(printf '%s' example.com | md5sum | cut -c1-8)
check "--username-hash %Ld hashes the lowercased domain" '[ "$(cut -f2 "$tmp/fmt.tsv")" = "$((16#$want))" ]'
echo x | "$sim" map --backends 127.0.2.1 --username-hash %q > /dev/null 2>&1
check "bad --username-hash exits 2" '[ $? -eq 2 ]'

# bench-core runs end to end and prints its figures as JSON (figures are not judged here:
# speed is a benchmark, not a test).
"$sim" bench-core --users 2000 --large-users 0 --json > "$tmp/bench.json" 2> "$tmp/bench.err"
check "bench-core --json runs" '[ $? -eq 0 ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d[\"placements_per_sec\"] > 0 and d[\"directory\"][0][\"users\"] == 2000 and d[\"directory\"][0][\"bytes_per_user\"] > 0" "$tmp/bench.json"'
"$sim" bench-core --users 5 > /dev/null 2>&1
check "bench-core refuses a tiny --users" '[ $? -eq 2 ]'

echo "1..$n"
[ $failed -eq 0 ]
