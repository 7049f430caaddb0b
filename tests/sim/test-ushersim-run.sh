#!/bin/bash
# test-ushersim-run.sh - run, trace, replay, shrink, reports and charts end to end (TAP output).
set -u
sim=${USHERSIM:?run through meson test}
scen=${USHER_SCENARIOS:?run through meson test}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { if eval "$2"; then ok "$1"; else not_ok "$1"; fi; }

"$sim" run "$scen/kick-storm.json" --trace "$tmp/t.json" --report "$tmp/r.json" --chart "$tmp/c.svg" > "$tmp/out.txt"
check "a passing scenario exits 0" '[ $? -eq 0 ] && grep -q "RESULT: PASS" "$tmp/out.txt"'
check "the report is JSON and says passed" 'python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert d[\"passed\"] and d[\"logins_ok\"] > 0 and len(d[\"samples\"]) > 0 and len(d[\"directors\"]) == 3" "$tmp/r.json"'
check "the chart is an SVG" 'head -c 200 "$tmp/c.svg" | grep -q "<svg"'
if command -v rsvg-convert > /dev/null; then
  rsvg-convert -w 1000 "$tmp/c.svg" -o "$tmp/c.png"
  check "the chart renders to a PNG of 1000 px by about 620, with content (rsvg-convert)" 'python3 -c "
import struct, sys, os
data = open(sys.argv[1], \"rb\").read()
assert data[:8] == b\"\\x89PNG\\r\\n\\x1a\\n\", \"not a PNG\"
w, h = struct.unpack(\">II\", data[16:24])
assert w == 1000 and 500 <= h <= 800, (w, h)
assert os.path.getsize(sys.argv[1]) > 20000, os.path.getsize(sys.argv[1])
" "$tmp/c.png"'
else
  echo "ok - # SKIP the chart is not rendered: no rsvg-convert (librsvg2-bin; tools/deps installs it)"
fi
"$sim" replay "$tmp/t.json" > "$tmp/replay.txt"
check "replay reproduces the fingerprint" '[ $? -eq 0 ] && grep -q "reproduced fingerprint" "$tmp/replay.txt"'
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["fingerprint"]="0000000000000000"; json.dump(d, open(sys.argv[2],"w"))' "$tmp/t.json" "$tmp/t2.json"
"$sim" replay "$tmp/t2.json" > "$tmp/replay2.txt"
check "a different recorded fingerprint is reported" '[ $? -eq 1 ] && grep -q "did not reproduce" "$tmp/replay2.txt"'

a=$("$sim" run "$scen/clock-step.json" | grep ^fingerprint)
b=$("$sim" run "$scen/clock-step.json" | grep ^fingerprint)
c=$("$sim" run "$scen/clock-step.json" --seed 99 | grep ^fingerprint)
check "same seed, same fingerprint; another seed, another" '[ "$a" = "$b" ] && [ "$a" != "$c" ]'

cat > "$tmp/fails.json" <<'JSON'
{"name": "fails", "duration": "10m",
 "cluster": {"directors": 2, "backends": ["10.0.2.1-10.0.2.2"]},
 "workload": {"users": 64, "logins_per_second": 2},
 "events": [{"at": "1m", "type": "host-down", "director": 0, "host": "10.0.2.1"},
            {"at": "2m", "type": "host-up", "director": 1, "host": "10.0.2.1"},
            {"at": "3m", "type": "link-delay", "a": 0, "b": 1, "delay": "5ms"}],
 "checks": [{"type": "min-logins", "min": 1000000}]}
JSON
"$sim" run "$tmp/fails.json" --trace "$tmp/ft.json" > "$tmp/fout.txt"
check "a failing check exits 1 and says which" '[ $? -eq 1 ] && grep -q "RESULT: FAIL" "$tmp/fout.txt" && grep -q "min-logins" "$tmp/fout.txt"'
"$sim" shrink "$tmp/ft.json" --out "$tmp/small.json" > "$tmp/shrink.txt"
check "shrink keeps the kind of the first failure" 'grep -q "keeping failures of the kind \"check {\\\"type\\\":\\\"min-logins\\\"" "$tmp/shrink.txt"'
check "shrink writes a smaller scenario" '[ $? -eq 0 ] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d.get(\"events\", [])) == 0 and d[\"workload\"][\"users\"] < 64" "$tmp/small.json"'
"$sim" run -q "$tmp/small.json"
check "the shrunk scenario still fails" '[ $? -eq 1 ]'
cat > "$tmp/slowhs.json" <<'JSON'
{"name": "slow-handshake", "duration": "3m", "convergence_budget": "2s",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.4"]},
 "network": {"bandwidth": "20k"},
 "workload": {"users": 20000, "logins_per_second": 200},
 "events": [{"at": "1m", "type": "director-crash", "director": 2},
            {"at": "1m10s", "type": "director-restart", "director": 2}],
 "checks": [{"type": "converged", "within": "1m"}]}
JSON
"$sim" run "$tmp/slowhs.json" > "$tmp/slowhs.txt"
check "a restarted director still in its handshake when the budget ends: the failure counts the users it lacks and names one" '[ $? -eq 1 ] && grep -Eq "did not converge within 2 s after director restart.*director 2: not handshaked.* [0-9]{4} differences from director 0 \(first: user hash [0-9]+ on director 0: 10\.0\.2\.[1-4] ts [0-9]+; on director 2: absent\)" "$tmp/slowhs.txt"'
cat > "$tmp/split.json" <<'JSON'
{"name": "split", "description": "a partition whose minority has no health quorum", "duration": "5m",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.2"],
             "health": {"enabled": true, "interval": "1s"}},
 "workload": {"users": 64, "logins_per_second": 2},
 "events": [{"at": "1m", "type": "partition", "groups": [[0], [1, 2]]},
            {"at": "1m30s", "type": "link-delay", "a": 1, "b": 2, "delay": "1ms"},
            {"at": "2m", "type": "heal"}],
 "checks": [{"type": "counter", "name": "directors.health_no_quorum", "max": 0}]}
JSON
"$sim" run -q "$tmp/split.json" --trace "$tmp/st.json" > /dev/null
"$sim" shrink "$tmp/st.json" --out "$tmp/split-small.json" > /dev/null
check "shrink keeps a fault's end with the fault, and says what is left" 'python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
types = [e[\"type\"] for e in d[\"events\"]]
assert types == [\"partition\", \"heal\"], types
assert \"Left: partition at 1m, heal at 2m\" in d[\"description\"], d[\"description\"]
" "$tmp/split-small.json"'
"$sim" shrink "$tmp/t.json" --out "$tmp/none.json" > /dev/null
check "shrinking a passing trace exits 1" '[ $? -eq 1 ]'

cat > "$tmp/idle.json" <<'JSON'
{"name": "idle", "duration": "10m",
 "cluster": {"directors": 2, "backends": ["10.0.2.1-10.0.2.2"]},
 "workload": {"users": 64, "logins_per_second": 2},
 "events": [{"at": "1m", "type": "heal"},
            {"at": "2m", "type": "director-crash", "director": 1},
            {"at": "3m", "type": "director-crash", "director": 1},
            {"at": "4m", "type": "host-remove", "director": 0, "host": "10.0.2.2"},
            {"at": "5m", "type": "host-remove", "director": 0, "host": "10.0.2.2"}],
 "checks": [{"type": "share", "host": "10.0.2.1", "min": 0, "max": 100}]}
JSON
"$sim" run -q "$tmp/idle.json" 2> "$tmp/idle.txt" > /dev/null
check "events that can do nothing are named, with the reason" '[ $(grep -c "does nothing" "$tmp/idle.txt") -eq 3 ] && grep -q "events\[2\] (director-crash at 3m) does nothing: director 1 is down already" "$tmp/idle.txt"'
sed 's/"10.0.2.1", "min"/"10.0.2.9", "min"/' "$tmp/idle.json" > "$tmp/share.json"
"$sim" run -q "$tmp/share.json" 2> "$tmp/share.txt" > /dev/null
check "a share check on an address that is no backend is an error" '[ $? -eq 2 ] && grep -q "checks\[0\].host: 10.0.2.9 is not a backend of the scenario" "$tmp/share.txt"'

cat > "$tmp/checks.json" <<'JSON'
{"name": "checks", "duration": "20m",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.3"]},
 "workload": {"users": 300, "logins_per_second": 5},
 "events": [{"at": "5m", "type": "host-remove", "director": 0, "host": "10.0.2.3"},
            {"at": "10m", "type": "director-crash", "director": 2},
            {"at": "10m30s", "type": "director-restart", "director": 2},
            {"at": "12m", "type": "flush", "director": 1, "max_parallel": 5}],
 "checks": [{"type": "user-on", "user": "user7@example.com", "host": "10.0.2.1", "at": "4m"},
            {"type": "max-moved-between", "from": "10.0.2.1", "max": 0},
            {"type": "moves-finished", "within": "1m"},
            {"type": "director-users", "director": 2, "min": 100, "at": "11m"}]}
JSON
"$sim" run "$tmp/checks.json" --report "$tmp/checks-report.json" > "$tmp/checks.txt"
check "user-on, max-moved-between, moves-finished and director-users hold; the report has every verdict and the move pairs" '[ $? -eq 0 ] && python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
assert [c[\"verdict\"] for c in r[\"checks\"]] == [\"ok\"] * 4, r[\"checks\"]
assert all(m[\"from\"] == \"10.0.2.3\" for m in r[\"moves_between\"]), r[\"moves_between\"]
assert all(\"hosts\" in d and \"users\" in d for d in r[\"directors\"] if d[\"up\"])
" "$tmp/checks-report.json"'
sed 's/"host": "10.0.2.1", "at": "4m"/"host": "10.0.2.2", "at": "4m"/; s/"from": "10.0.2.1", "max": 0/"from": "10.0.2.3", "max": 0/' "$tmp/checks.json" > "$tmp/checks2.json"
"$sim" run "$tmp/checks2.json" > "$tmp/checks2.txt"
check "user-on and max-moved-between fail when they should, naming what they saw" '[ $? -eq 1 ] && grep -q "director 0: 10.0.2.1" "$tmp/checks2.txt" && grep -q "logins changed backend so (max 0)" "$tmp/checks2.txt"'

"$sim" run "$scen/ring-split-and-merge.json" --report "$tmp/split-report.json" > "$tmp/split.txt"
"$sim" run "$scen/ring-split-and-merge.json" > "$tmp/split2.txt"
check "two runs of the same seed print the same text but for the marked host-timing line" 'diff <(grep -v "^host timing (varies between runs)" "$tmp/split.txt") <(grep -v "^host timing (varies between runs)" "$tmp/split2.txt") > /dev/null'
check "users settled by lower-IP-wins at a merge are named, in the text and the report" 'grep -q "settled when they met" "$tmp/split.txt" && python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
c = r[\"split_conflicts\"]
assert c and all(x[\"kept\"] < x[\"lost\"] or len(x[\"kept\"]) < len(x[\"lost\"]) for x in c), c[:3]
assert all(x[\"user\"] for x in c)
" "$tmp/split-report.json"'

python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
d["events"].append({"at": "22m", "type": "clock-step", "director": 2, "step": "+45s"})
json.dump(d, open(sys.argv[2], "w"))' "$scen/host-removal.json" "$tmp/removal-step.json"
"$sim" run "$scen/host-removal.json" | grep "^users on two backends" > "$tmp/removal.txt"
"$sim" run "$tmp/removal-step.json" | grep "^users on two backends" > "$tmp/removal-step.txt"
check "an unrelated clock step leaves the windows of an unsafe host removal labelled unsafe" 'diff "$tmp/removal.txt" "$tmp/removal-step.txt" > /dev/null && grep -q "0 in split brain, 0 from clock skew, [1-9][0-9]* after unsafe" "$tmp/removal-step.txt"'
cat > "$tmp/skew.json" <<'JSON'
{"name": "skew", "duration": "20m",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.3"], "settings": {"user_expire": "60s"}},
 "workload": {"users": 300, "logins_per_second": 3,
              "session_duration": {"kind": "log-uniform", "min": "10s", "max": "10m"}},
 "events": [{"at": "5m", "type": "host-add", "director": 0, "host": "10.0.2.4"},
            {"at": "8m", "type": "clock-step", "director": 2, "step": "+40s"}],
 "checks": [{"type": "no-double-backend", "allow_split_brain": true}]}
JSON
"$sim" run "$tmp/skew.json" > "$tmp/skew.txt"
check "a clock step that expires entries early gives clock-skew windows, allowed as split brain is" '[ $? -eq 0 ] && grep -q "0 in split brain, [1-9][0-9]* from clock skew, 0 after unsafe host changes, 0 violations" "$tmp/skew.txt"'
sed 's/"allow_split_brain": true/"allow_split_brain": false/' "$tmp/skew.json" > "$tmp/skew-strict.json"
"$sim" run "$tmp/skew-strict.json" > "$tmp/skew-strict.txt"
check "without allow_split_brain the same windows fail no-double-backend" '[ $? -eq 1 ] && grep -q "times a user had live sessions on two backends" "$tmp/skew-strict.txt"'

check "help reads right in the C locale (no [OPTION?])" 'LC_ALL=C "$sim" run --help | grep -q "^  ushersim run \[OPTION\.\.\.\]" && ! LC_ALL=C "$sim" run --help | grep -q "OPTION?"'

echo '{"name": "x", "cluster": {"backends": ["10.0.2.1"]}, "workload": {}, "extra": 1}' > "$tmp/bad.json"
"$sim" run "$tmp/bad.json" 2> "$tmp/bad.txt"
check "a bad scenario exits 2 naming the field" '[ $? -eq 2 ] && grep -q "extra: unknown field" "$tmp/bad.txt"'
"$sim" run /nonexistent.json 2> /dev/null
check "a missing scenario exits 2" '[ $? -eq 2 ]'
"$sim" swarm --seeds 4 --start 10 > "$tmp/swarm.txt"
check "swarm runs seeds and reports" '[ $? -eq 0 ] && grep -q "swarm: 4 seeds from 10" "$tmp/swarm.txt"'
# Output paths: a symbolic link is written through, never replaced; an empty name fails first.
echo old > "$tmp/target.json"
ln -s "$tmp/target.json" "$tmp/link.json"
"$sim" run -q "$scen/kick-storm.json" --report "$tmp/link.json"
check "--report through a symbolic link writes its target and keeps the link" \
  '[ $? -eq 0 ] && [ -L "$tmp/link.json" ] && grep -q "\"scenario\"" "$tmp/target.json"'
"$sim" run "$scen/kick-storm.json" --report "" > "$tmp/empty.out" 2> "$tmp/empty.err"
check "--report \"\" fails before the run" '[ $? -eq 2 ] && grep -q "name is empty" "$tmp/empty.err" && [ ! -s "$tmp/empty.out" ]'
"$sim" shrink "$tmp/ft.json" --out "$tmp/no/such/dir/s.json" > "$tmp/so.out" 2> "$tmp/so.err"
check "shrink --out into a missing directory fails before shrinking" \
  '[ $? -eq 2 ] && grep -q "does not exist" "$tmp/so.err" && [ ! -s "$tmp/so.out" ]'
# Traces: every field checked, one line naming it.
for bad in 'd["seed"]={}' 'd["seed"]=-5' 'd["seed"]="abc"' 'd["fingerprint"]=12' 'd["usher_trace"]=99' 'd["failures"]=[5]' 'd["scenario"]["duration"]="xyz"'; do
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); $bad; json.dump(d, open(sys.argv[2],'w'))" "$tmp/ft.json" "$tmp/bad.json"
  "$sim" replay "$tmp/bad.json" > /dev/null 2> "$tmp/bad.err"
  st=$?
  check "replay of a trace with $bad: exit 2, one line naming the field" \
    '[ $st -eq 2 ] && [ "$(wc -l < "$tmp/bad.err")" = 1 ] && ! grep -q CRITICAL "$tmp/bad.err"'
done
# A backend failing before the host-add that names it (or one sent to a crashed director).
cat > "$tmp/failfirst.json" <<'JSON'
{"name": "fail-first", "duration": "3m",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.3"]},
 "workload": {"users": 100, "logins_per_second": 2},
 "events": [{"at": "10s", "type": "director-crash", "director": 2},
            {"at": "20s", "type": "host-add", "director": 2, "host": "10.0.2.8"},
            {"at": "1m30s", "type": "host-add", "director": 0, "host": "10.0.2.9"},
            {"at": "1m", "type": "backend-fail", "host": "10.0.2.9"},
            {"at": "2m", "type": "backend-recover", "host": "10.0.2.8"}]}
JSON
"$sim" run -q "$tmp/failfirst.json" > /dev/null 2>&1
check "backend events before their host-add run (no crash)" '[ $? -eq 0 ]'
cat > "$tmp/noheal.json" <<'JSON'
{"name": "no-heal", "duration": "3m",
 "cluster": {"directors": 3, "backends": ["10.0.2.1-10.0.2.3"]},
 "workload": {"users": 100, "logins_per_second": 2},
 "events": [{"at": "1m", "type": "partition", "groups": [[0], [1, 2]]}],
 "checks": [{"type": "converged"}]}
JSON
"$sim" run "$tmp/noheal.json" > "$tmp/noheal.out" 2>&1
check "converged with a partition never healed fails, saying why" \
  '[ $? -eq 1 ] && grep -q "a fault is still in force at the end of the run" "$tmp/noheal.out"'
echo "1..$n"
[ $failed -eq 0 ]
