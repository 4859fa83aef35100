#!/bin/sh
# Install the node image's Debian packages, unless they are all present already.
# A base image made by build-base.sh (debootstrap --include) has them all, so this is
# a no-op there and needs no network; on a stock Debian image it runs apt-get.
set -eu
list="$(dirname "$0")/packages.txt"
packages="$(grep -v '^[[:space:]]*#' "$list" | grep -v '^[[:space:]]*$' | tr '\n' ' ')"
missing=""
for package in $packages; do
    dpkg-query -W -f='${Status}\n' "$package" 2>/dev/null | grep -q '^install ok installed$' \
        || missing="$missing $package"
done
if [ -z "$missing" ]; then
    echo "install-packages: all $(echo $packages | wc -w) packages present"
    exit 0
fi
echo "install-packages: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y --no-install-recommends $missing
apt-get clean
rm -rf /var/lib/apt/lists/*
