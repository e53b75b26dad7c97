#!/usr/bin/env bash
# Sets cctrace up in this checkout: the project's .venv with the test extras. With --host-probes (as
# root): what the eBPF host probes need too: bcc (python3-bpfcc), a kernel header tree, tracefs and
# debugfs mounted. Idempotent; scripts/test.sh runs it with --host-probes as root.
#
# The host probes compile against kernel headers. Machines whose running kernel has no header
# package (like CI's) get Debian's linux-headers-amd64 merged into one tree at
# /opt/cctrace/kheaders/build, which cctrace finds by itself (or via BCC_KERNEL_SOURCE).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
venv dev
[ "${1:-}" = --host-probes ] || exit 0
[ "$(id -u)" = 0 ] || die "--host-probes sets up bcc, kernel headers and tracefs: run it as root"
command -v apt-get >/dev/null || die "--host-probes knows Debian/Ubuntu (apt-get) only; install bcc and kernel headers yourself"
kheaders() { [ -d "/lib/modules/$(uname -r)/build/include" ] || [ -d /opt/cctrace/kheaders/build/include ]; }
need=""
dpkg -s python3-bpfcc >/dev/null 2>&1 || need="$need python3-bpfcc"
kheaders || dpkg -s linux-headers-amd64 >/dev/null 2>&1 || need="$need linux-headers-amd64"
dpkg -s chromium >/dev/null 2>&1 || need="$need chromium"  # the browser test of `report --html` (tests/test_html.py)
if [ -n "$need" ]; then
  step "installing$need with apt-get (host probes)"
  ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade $need
fi
if ! kheaders; then
  common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1)
  arch=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
  step "merging a kernel header tree for bcc at /opt/cctrace/kheaders/build (from $(basename "$arch"))"
  tmp=$(mktemp -d /opt/cctrace-kh.XXXX); mkdir -p "$tmp/build"
  cp -a "$common/include" "$common/arch" "$common/Makefile" "$tmp/build/"
  cp -a "$arch/.config" "$arch/include" "$arch/arch" "$tmp/build/"
  (cd "$tmp/build/arch" && ls | grep -vx x86 | xargs rm -rf)
  mkdir -p /opt/cctrace && rm -rf /opt/cctrace/kheaders && mv "$tmp" /opt/cctrace/kheaders
fi
for fs in tracefs:/sys/kernel/tracing debugfs:/sys/kernel/debug; do
  dir=${fs#*:}
  if ! mountpoint -q "$dir"; then
    step "mounting ${fs%%:*} at $dir"
    mount -t "${fs%%:*}" none "$dir" || echo "setup: could not mount ${fs%%:*} at $dir; host probes will say why they are off" >&2
  fi
done
