#!/bin/sh
# exports-check.sh NM LIBRARY - fails if the static library defines a global symbol outside the
# public API (names starting with usher_). libcore's internals must stay hidden (issue: a program
# that linked libcore could otherwise call or clash with conn_close, flood, ...).
set -eu
nm_bin=$1
lib=$2
if [ ! -f "$lib" ]; then
  echo "exports-check: $lib not found" >&2
  exit 2
fi
public=$("$nm_bin" -g --defined-only "$lib" | awk 'NF == 3 {print $3}' | sort -u)
if [ -z "$public" ]; then
  echo "exports-check: $lib exports nothing at all" >&2
  exit 1
fi
bad=$(printf '%s\n' "$public" | grep -v '^usher_' || true)
if [ -n "$bad" ]; then
  echo "exports-check: $lib exports symbols outside the usher_ API:" >&2
  printf '  %s\n' $bad >&2
  exit 1
fi
echo "exports-check: $(printf '%s\n' "$public" | wc -l) symbols, all usher_*"
