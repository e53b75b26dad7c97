# Sourced by main.sh, test.sh and setup.sh: the project's virtual environment .venv, made once.
# Debian's python is externally managed (no pip into it), so cctrace lives in .venv; the venv sees the
# system's site-packages (--system-site-packages) so the distribution's bcc (python3-bpfcc), and a GPU
# machine's torch and cupti-python, stay importable without being installed again.

step() { echo "==> $*" >&2; }
die() { echo "cctrace: $*" >&2; exit 1; }

VENV=.venv
VPY=$VENV/bin/python

_make_venv() {
  local py=${PYTHON:-python3}
  command -v "$py" >/dev/null || die "no $py on PATH; install Python 3.10 or newer"
  step "creating the virtual environment $VENV ($py -m venv --system-site-packages)"
  if "$py" -m venv --system-site-packages "$VENV"; then return; fi
  rm -rf "$VENV"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "python3 -m venv needs Debian's python3-venv: installing it with apt-get (as root)"
    ls /var/lib/apt/lists 2>/dev/null | grep -q Packages || apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade python3-venv
    "$py" -m venv --system-site-packages "$VENV" || die "$py -m venv still fails after installing python3-venv"
  else
    die "$py -m venv does not work here; install it with: sudo apt-get install python3-venv"
  fi
}

# venv EXTRAS: make .venv if needed and install cctrace[EXTRAS] into it (editable), again only when
# pyproject.toml or the extras changed.
venv() {
  local extras=$1 stamp="$VENV/.cctrace-installed" want
  [ -x "$VPY" ] && "$VPY" -c 'import sys' 2>/dev/null || { rm -rf "$VENV"; _make_venv; }
  want="$extras $(cksum < pyproject.toml)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    local isolation=()
    # setuptools that builds wheels itself (>= 70.1) needs no download to build cctrace: works offline
    "$VPY" -c 'import sys, setuptools; sys.exit(tuple(map(int, setuptools.__version__.split(".")[:2])) < (70, 1))' \
      2>/dev/null && isolation=(--no-build-isolation)
    step "installing cctrace[$extras] into $VENV (pip install -e${isolation:+ ${isolation[*]}})"
    "$VPY" -m pip install -q --disable-pip-version-check "${isolation[@]}" -e ".[$extras]"
    echo "$want" > "$stamp"
  fi
}
