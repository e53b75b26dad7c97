#!/usr/bin/env bash
# Sets up cctrace on a fresh Debian machine: the Python package with its analysis and test extras,
# and (as root) bcc plus a kernel header tree for the eBPF host probes. Idempotent.
#
# The host probes compile against kernel headers. Machines whose running kernel has no header
# package (like CI's) get Debian's linux-headers-amd64 merged into one tree at
# /opt/cctrace/kheaders/build, which cctrace finds by itself (or via BCC_KERNEL_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[dev]'

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=""
  dpkg -s python3-bpfcc >/dev/null 2>&1 || need="$need python3-bpfcc"
  if [ ! -d "/lib/modules/$(uname -r)/build/include" ] && [ ! -d /opt/cctrace/kheaders/build/include ]; then
    dpkg -s linux-headers-amd64 >/dev/null 2>&1 || need="$need linux-headers-amd64"
  fi
  if [ -n "$need" ]; then
    ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >/dev/null
  fi
  if [ ! -d "/lib/modules/$(uname -r)/build/include" ] && [ ! -d /opt/cctrace/kheaders/build/include ]; then
    common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1)
    arch=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    tmp=$(mktemp -d /opt/cctrace-kh.XXXX); mkdir -p "$tmp/build"
    cp -a "$common/include" "$common/arch" "$common/Makefile" "$tmp/build/"
    cp -a "$arch/.config" "$arch/include" "$arch/arch" "$tmp/build/"
    (cd "$tmp/build/arch" && ls | grep -vx x86 | xargs rm -rf)
    mkdir -p /opt/cctrace && rm -rf /opt/cctrace/kheaders && mv "$tmp" /opt/cctrace/kheaders
    echo "setup: kernel header tree for bcc at /opt/cctrace/kheaders/build (from $(basename "$arch"))"
  fi
  mountpoint -q /sys/kernel/tracing || mount -t tracefs none /sys/kernel/tracing 2>/dev/null || true
  mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
fi
echo "setup: cctrace $(python3 -c 'import cctrace; print(cctrace.__version__)') installed"
