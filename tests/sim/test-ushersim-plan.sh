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
check "plan without thresholds exits 0" '[ $status -eq 0 ]'
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
echo "1..$n"
[ $failed -eq 0 ]
