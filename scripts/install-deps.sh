#!/bin/sh
# Installs, from Debian's repositories, what petrel needs to build and test.
# Safe to run again: only missing packages are installed.
set -eu
PKGS="build-essential pkg-config clang libclang-rt-14-dev libevent-dev libssl-dev libunbound-dev libidn2-dev
libcrypt-dev libcmocka-dev python3 python3-pytest swaks curl openssl dnsmasq-base postfix
dnsutils msmtp clang-format cppcheck"
missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages:$missing (run as root to install them)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Postfix is installed only as a test peer: no system MTA is configured or started.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends $missing
