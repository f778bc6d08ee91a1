#!/bin/sh
# Build skarnet's C s6-networking 2.8.0.1 (BearSSL backend) and what it needs into PREFIX,
# from the release archives in interop/c-s6/, for the interoperability tests
# (tests/test_c_interop.py finds the tools in PREFIX/bin; the usual PREFIX is .c-s6).
#
#   sh interop/build-c-s6.sh PREFIX
#
# Idempotent: PREFIX/.c-s6-stamp records the sha256 of the archives it was built from;
# when it matches the archives here (and the programs are there), nothing is rebuilt.
# BearSSL comes from the distribution (libbearssl-dev); when /usr/include/bearssl.h is
# missing it is installed with apt-get (which needs root), with a C toolchain.
# The programs are configured with --enable-absolute-paths, so the C wrappers (s6-tlsd,
# s6-tlsserver, ...) exec the C helpers from PREFIX/bin, never a same-named program from
# PATH, such as ours.
set -eu

prefix=${1:?usage: build-c-s6.sh PREFIX}
here=$(cd "$(dirname "$0")" && pwd)
archives=$here/c-s6
stamp_name=.c-s6-stamp

say() { printf 'build-c-s6: %s\n' "$*"; }
die() { printf 'build-c-s6: fatal: %s\n' "$*" >&2; exit 1; }

[ -f "$archives/SHA256SUMS" ] || die "missing $archives/SHA256SUMS"
(cd "$archives" && sha256sum --check --quiet SHA256SUMS) || die "the archives in $archives do not match SHA256SUMS"

mkdir -p "$prefix"
prefix=$(cd "$prefix" && pwd)
wanted=$(cat "$archives/SHA256SUMS")

if [ -f "$prefix/$stamp_name" ] && [ "$(cat "$prefix/$stamp_name")" = "$wanted" ] \
  && [ -x "$prefix/bin/s6-tlsd-io" ] && [ -x "$prefix/bin/s6-tlsserver" ]; then
  say "up to date in $prefix (remove $prefix/$stamp_name to force a rebuild)"
  exit 0
fi
rm -f "$prefix/$stamp_name"

if [ ! -f /usr/include/bearssl.h ] || ! command -v cc >/dev/null 2>&1 || ! command -v make >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || die "BearSSL headers or a C toolchain are missing: apt-get install libbearssl-dev build-essential (as root)"
  say "installing libbearssl-dev and build-essential with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq libbearssl-dev build-essential >/dev/null
fi
bearssl_lib=$(cc -print-file-name=libbearssl.so)
case $bearssl_lib in
  /*) ;;
  *) bearssl_lib=$(cc -print-file-name=libbearssl.a) ;;
esac
bearssl_lib=$(cd "$(dirname "$bearssl_lib")" && pwd -P)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
log=$work/build.log
jobs=$(nproc 2>/dev/null || echo 2)

# Run a build step quietly; on failure show the end of its log.
step() {
  if ! "$@" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "failed: $*"
  fi
}

for archive in "$archives"/*.tar.gz; do
  tar -xzf "$archive" -C "$work"
done

# The order matters: each package is configured against the ones installed before it.
say "skalibs"
cd "$work/skalibs"
step ./configure --prefix="$prefix" --with-sysdep-devurandom=yes
step make -j"$jobs"
step make install

deps="--with-sysdeps=$prefix/lib/skalibs/sysdeps --with-include=$prefix/include --with-lib=$prefix/lib --with-dynlib=$prefix/lib"
for package in execline s6 s6-dns; do
  say "$package"
  cd "$work/$package"
  # shellcheck disable=SC2086 # $deps is a list of options
  step ./configure --prefix="$prefix" --enable-absolute-paths $deps
  step make -j"$jobs"
  step make install
done

say "s6-networking (BearSSL from $bearssl_lib)"
cd "$work/s6-networking"
# shellcheck disable=SC2086
step ./configure --prefix="$prefix" --enable-absolute-paths $deps \
  --enable-ssl=bearssl --with-include=/usr/include --with-lib="$bearssl_lib" --with-dynlib="$bearssl_lib"
step make -j"$jobs"
step make install

[ -x "$prefix/bin/s6-tlsd-io" ] || die "no s6-tlsd-io in $prefix/bin after the build"
printf '%s\n' "$wanted" >"$prefix/$stamp_name"
say "C s6-networking 2.8.0.1 (BearSSL) installed in $prefix/bin"
