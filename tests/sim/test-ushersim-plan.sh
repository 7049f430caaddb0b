#!/bin/bash
# test-ushersim-plan.sh - "ushersim plan" against "ushersim map" on the same two configurations
# (TAP output). The moved-user counts must agree exactly.
set -u
sim=${USHERSIM:?run through meson test}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { if eval "$2"; then ok "$1"; else not_ok "$1"; fi; }

cat > "$tmp/cur.conf" <<'CONF'
[backends]
hosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4
CONF
cat > "$tmp/new.conf" <<'CONF'
[backends]
hosts = 10.0.0.1 10.0.0.2 10.0.0.3=50 10.0.0.4 10.0.0.5
CONF
for i in $(seq 1 20000); do echo "user$i@example.org"; done > "$tmp/users.txt"
"$sim" map --config "$tmp/cur.conf" --users "$tmp/users.txt" > "$tmp/a.tsv"
"$sim" map --config "$tmp/new.conf" --users "$tmp/users.txt" > "$tmp/b.tsv"
want=$(paste "$tmp/a.tsv" "$tmp/b.tsv" | awk -F'\t' '$3 != $6' | wc -l)
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/new.conf" --users "$tmp/users.txt" --json > "$tmp/plan.json"
status=$?
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moved"])' "$tmp/plan.json")
check "plan moved count equals map difference ($want)" '[ "$got" = "$want" ] && [ "$want" -gt 0 ]'
moved_pct=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moved_percent"])' "$tmp/plan.json")
check "plan without thresholds applies --max-moved 25: this change ($moved_pct%) is not safe, exit 1" \
  '[ $status -eq 1 ]'
printf '[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3\n' > "$tmp/three.conf"
printf '[backends]\nhosts = 10.0.0.1\n' > "$tmp/one.conf"
"$sim" plan --config "$tmp/three.conf" --proposed "$tmp/one.conf" > "$tmp/cut.txt"
check "three backends cut to one (two thirds move) is not safe by default" \
  '[ $? -eq 1 ] && grep -q "over --max-moved 25.00% (the default)" "$tmp/cut.txt" && grep -q "safe to apply in one step: no" "$tmp/cut.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" > "$tmp/same0.txt"
check "no change with the default limits: safe, exit 0, the limits printed" \
  '[ $? -eq 0 ] && grep -q "limits: --max-moved 25.00% (default)" "$tmp/same0.txt"'
printf '[director]\nusername_hash = %%Lu\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/lu.conf"
printf '[director]\nusername_hash = %%Ln\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/ln.conf"
"$sim" plan --config "$tmp/lu.conf" --proposed "$tmp/ln.conf" --user-count 4000 --json > "$tmp/luln.json"
luln=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moved_percent"])' "$tmp/luln.json")
check "synthetic users have domains: %Lu -> %Ln moves most of them ($luln%)" \
  'python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 50 else 1)" "$luln"'
printf '[director]\nusername_hash = %%u\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/u.conf"
"$sim" plan --config "$tmp/lu.conf" --proposed "$tmp/u.conf" --user-count 4000 --json > "$tmp/luu.json"
luu=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["moved_percent"])' "$tmp/luu.json")
check "synthetic users have capitals: %Lu -> %u moves some of them ($luu%)" \
  'python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) > 10 else 1)" "$luu"'
printf '[director]\nusername_hash = Lu\n[backends]\nhosts = 10.0.0.1\n' > "$tmp/nolu.conf"
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/nolu.conf" > /dev/null 2> "$tmp/nolu.err"
check "username_hash without a variable (Lu) is bad input, exit 2" \
  '[ $? -eq 2 ] && grep -q "names no part of the user name" "$tmp/nolu.err"'
printf '[backends]\nhosts =\n' > "$tmp/empty.conf"
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/empty.conf" > /dev/null 2> "$tmp/empty.err"
check "a proposal with no backend at all is bad input, exit 2" \
  '[ $? -eq 2 ] && grep -q "no backend at all" "$tmp/empty.err"'
for spec in "" ",,," " , "; do
  echo user1 | "$sim" map --backends "$spec" > /dev/null 2> "$tmp/b.err"
  check "map --backends '$spec' is bad input, exit 2" '[ $? -eq 2 ] && grep -q "no backend at all" "$tmp/b.err"'
done
printf '[backends]\nhosts = 10.0.0.1@eu 10.0.0.2@us\n' > "$tmp/tags.conf"
"$sim" plan --config "$tmp/tags.conf" --proposed "$tmp/tags.conf" > /dev/null 2> "$tmp/tags.err"
check "plan on a tagged configuration without --tag names the tags, exit 2" \
  '[ $? -eq 2 ] && grep -q "the tags there are: eu, us" "$tmp/tags.err"'
"$sim" plan --config "$tmp/tags.conf" --proposed "$tmp/tags.conf" --tag eu > /dev/null
check "with --tag eu it plans" '[ $? -eq 0 ]'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --user-count 0 > /dev/null 2> "$tmp/uc.err"
check "--user-count 0 is bad input naming the range" '[ $? -eq 2 ] && grep -q "1..100000000" "$tmp/uc.err"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --max-moved -1 > /dev/null 2> "$tmp/mm.err"
check "--max-moved -1 is bad input naming the range" '[ $? -eq 2 ] && grep -q "0..100" "$tmp/mm.err"'
# Per pair: 10.0.0.3 -> 10.0.0.5 as map sees it.
pair_map=$(paste "$tmp/a.tsv" "$tmp/b.tsv" | awk -F'\t' '$3 == "10.0.0.3" && $6 == "10.0.0.5"' | wc -l)
pair_plan=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(m["users"] for m in d["moves"] if m["from"]=="10.0.0.3" and m["to"]=="10.0.0.5"))' "$tmp/plan.json")
check "plan per-pair count equals map ($pair_map)" '[ "$pair_map" = "$pair_plan" ]'
# Thresholds
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/new.conf" --users "$tmp/users.txt" --max-moved 5 > "$tmp/t.txt"
check "crossing --max-moved exits 1 and says so" '[ $? -eq 1 ] && grep -q "over --max-moved" "$tmp/t.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/new.conf" --users "$tmp/users.txt" --max-moved 50 --max-share 30 > "$tmp/t2.txt"
check "within thresholds exits 0" '[ $? -eq 0 ] && grep -q "safe to apply in one step: yes" "$tmp/t2.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --user-count 5000 > "$tmp/same.txt"
check "no change moves nobody" '[ $? -eq 0 ] && grep -q "^5000 users; 0 change backend" "$tmp/same.txt"'
printf '[director]\nusername_hash = %%Ln\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/hash.conf"
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/hash.conf" --user-count 1000 > "$tmp/h.txt"
check "a username_hash change is flagged unsafe" '[ $? -eq 1 ] && grep -q "username_hash changes" "$tmp/h.txt"'
"$sim" plan --config "$tmp/cur.conf" > /dev/null 2>&1
check "missing --proposed exits 2" '[ $? -eq 2 ]'
"$sim" plan --config "$tmp/cur.conf" --proposed /nonexistent.conf > /dev/null 2> "$tmp/e.txt"
check "unreadable proposed config exits 2 naming it" '[ $? -eq 2 ] && grep -q nonexistent.conf "$tmp/e.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --users "$tmp" > /dev/null 2> "$tmp/dir.err"
check "--users on a directory is bad input saying so" '[ $? -eq 2 ] && grep -q "is a directory" "$tmp/dir.err"'
echo user1 | "$sim" map --backends "$(printf '10.0.0.1,\xff')" > /dev/null 2> "$tmp/utf.err"
check "non-UTF-8 bytes in --backends name the option" '[ $? -eq 2 ] && grep -q -- "--backends: not valid UTF-8" "$tmp/utf.err"'
printf 'a\tb\n' | "$sim" map --backends 10.0.0.1 > "$tmp/tab.tsv"
check "a TAB in a user name is written \\t (three columns stay three)" \
  '[ "$(awk -F"\t" "{print NF}" "$tmp/tab.tsv")" = 3 ] && grep -q "^a\\\\tb" "$tmp/tab.tsv"'
"$sim" run "$(dirname "$0")/../../scenarios/flush.json" --chart "$tmp/no/such/dir/c.svg" > "$tmp/run.out" 2> "$tmp/chart.err"
check "--chart into a missing directory fails before the run" \
  '[ $? -eq 2 ] && grep -q "does not exist" "$tmp/chart.err" && [ ! -s "$tmp/run.out" ]'
printf 'user1\n\nuser2\n' | "$sim" map --backends 10.0.0.1 > /dev/null 2> "$tmp/empty1.err"
check "one empty line: \"1 empty line skipped\"" 'grep -q "1 empty line skipped" "$tmp/empty1.err"'
check "plan --json writes shares as hundredths (no 38.399999999999999)" \
  '! grep -Eq "[0-9]+\.[0-9]{3,}" "$tmp/plan.json"'
printf '[backends]\nhosts = 10.0.0.1 10.0.0.2\n[backend 10.0.0.1]\nhostname = mail1\n' > "$tmp/removed.conf"
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/removed.conf" --user-count 500 > "$tmp/removed.txt"
check "a removed backend is marked [removed], a [backend] host name is shown" \
  'grep -q "^10.0.0.3 \[removed\]" "$tmp/removed.txt" && grep -q "^10.0.0.1 (mail1) " "$tmp/removed.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/removed.conf" --user-count 500 --chart "$tmp/plan.svg" > /dev/null
check "plan --chart writes an SVG" 'head -c 300 "$tmp/plan.svg" | grep -q "<svg"'
if command -v rsvg-convert > /dev/null; then
  rsvg-convert -w 1000 "$tmp/plan.svg" -o "$tmp/plan.png"
  check "the plan chart renders to a PNG with content (rsvg-convert)" 'python3 -c "
import struct, sys, os
data = open(sys.argv[1], \"rb\").read()
w, h = struct.unpack(\">II\", data[16:24])
assert data[:4] == b\"\\x89PNG\" and w == 1000 and 400 <= h <= 800, (w, h)
assert os.path.getsize(sys.argv[1]) > 10000
" "$tmp/plan.png"'
fi
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/removed.conf" --user-count 500 --chart "$tmp/no/such/dir/p.svg" > /dev/null 2> "$tmp/chart.err"
check "plan --chart into a missing directory fails at once (exit 2)" '[ $? -eq 2 ] && grep -q "does not exist" "$tmp/chart.err"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --max-moved nan > /dev/null 2> "$tmp/nan.err"
check "--max-moved nan is bad input naming the range" '[ $? -eq 2 ] && grep -q "0..100" "$tmp/nan.err"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --max-share NaN > /dev/null 2> "$tmp/nan2.err"
check "--max-share NaN is bad input naming the range" '[ $? -eq 2 ] && grep -q "0..100" "$tmp/nan2.err"'
printf '\n\n' > "$tmp/nousers.txt"
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/removed.conf" --users "$tmp/nousers.txt" > /dev/null 2> "$tmp/nousers.err"
check "--users with no user name is bad input, not a verdict" '[ $? -eq 2 ] && grep -q "no user names in it" "$tmp/nousers.err"'
printf '[backends]\nhosts = 10.0.0.1 10.0.0.2\n[backend 10.0.0.1]\nhostname = mx1.1234567.example\n' > "$tmp/hn.conf"
"$sim" plan --config "$tmp/hn.conf" --proposed "$tmp/hn.conf" --user-count 300 --json > "$tmp/hn.json"
check "plan --json rounds numbers only, never a host name's digits" \
  'grep -q "\"mx1.1234567.example\"" "$tmp/hn.json"'
printf '[director]\nusername_hash = %%{user}\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/same-hash.conf"
printf '[director]\nusername_hash = %%u\n[backends]\nhosts = 10.0.0.1 10.0.0.2 10.0.0.3 10.0.0.4\n' > "$tmp/same-hash0.conf"
"$sim" plan --config "$tmp/same-hash0.conf" --proposed "$tmp/same-hash.conf" --user-count 1000 > "$tmp/sh.txt"
check "%u -> %{user} hashes alike: not a change, said so, exit 0" \
  '[ $? -eq 0 ] && grep -q "written differently" "$tmp/sh.txt" && grep -q "safe to apply in one step: yes" "$tmp/sh.txt"'
"$sim" plan --config "$tmp/cur.conf" --proposed "$tmp/cur.conf" --max-moved 50 --max-moved 10 > /dev/null 2> "$tmp/twice.err"
check "an option given twice is bad input naming it" '[ $? -eq 2 ] && grep -q -- "--max-moved is given 2 times" "$tmp/twice.err"'
echo user1 | "$sim" map --backends 10.0.0.1 -b 10.0.0.2 > /dev/null 2> "$tmp/twice2.err"
check "long and short forms of one option count together" '[ $? -eq 2 ] && grep -q -- "--backends is given 2 times" "$tmp/twice2.err"'
echo "1..$n"
[ $failed -eq 0 ]
