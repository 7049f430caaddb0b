#!/bin/sh
# purity-self-test.sh NM CHECK BADLIB - the purity check must fail on a library that calls time()
# and rand(), and must name both symbols.
set -u
out=$("$2" "$1" "$3" 2>&1)
status=$?
if [ $status -ne 1 ]; then
  echo "purity check accepted an impure library (exit $status): $out" >&2
  exit 1
fi
for sym in time rand; do
  echo "$out" | grep -qx "  $sym" || { echo "purity check did not name $sym: $out" >&2; exit 1; }
done
echo "purity check rejects impure code: ok"
