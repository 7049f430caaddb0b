#!/bin/sh
# localize-hidden.sh LD OBJCOPY AR OUT IN - turns the static library IN into OUT, one relocatable
# object in which every symbol of hidden visibility (libcore's internals, declared under
# "#pragma GCC visibility push(hidden)" in director-private.h) is local. Programs that link OUT
# see only the public usher_* API; `nm -g` on OUT lists nothing else.
set -eu
ld=$1 objcopy=$2 ar=$3 out=$4 in=$5
obj="$out.o"
"$ld" -r -o "$obj" --whole-archive "$in"
"$objcopy" --localize-hidden "$obj"
rm -f "$out"
"$ar" rcs "$out" "$obj"
rm -f "$obj"
