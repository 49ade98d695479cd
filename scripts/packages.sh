# Debian's packages for scripts/setup.sh, sourced by it (bash): installs that wait for the
# package lock instead of failing at once while another apt-get, dpkg or
# unattended-upgrades holds it, and say so.

# Seconds an install waits for the package lock before it gives up.
PACKAGE_LOCK_SECONDS=${PACKAGE_LOCK_SECONDS:-600}

# package_lock_held: whether another process holds one of apt's and dpkg's locks now
# (the fcntl locks apt-get takes; reading them needs root).
package_lock_held() {
  ${sudo:-} python3 - <<'PY'
import fcntl, sys
for path in ("/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock"):
    try:
        handle = open(path, "a")
    except OSError:
        continue
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(0)  # held by another process
sys.exit(1)
PY
}

# wait_for_package_lock: returns once no process holds the package lock, saying that it
# waits and for how long; 1 after PACKAGE_LOCK_SECONDS.
wait_for_package_lock() {
  local waited=0
  while package_lock_held; do
    if [ "$waited" = 0 ]; then
      echo "setup.sh: another package manager (apt-get, dpkg, unattended-upgrades) holds the package lock: waiting up to ${PACKAGE_LOCK_SECONDS} s" >&2
    elif [ $((waited % 30)) = 0 ]; then
      echo "setup.sh: still waiting for the package lock (${waited} s)" >&2
    fi
    if [ "$waited" -ge "$PACKAGE_LOCK_SECONDS" ]; then
      echo "setup.sh: the package lock is still held after ${waited} s; run setup again once the other package manager is done" >&2
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  [ "$waited" = 0 ] || echo "setup.sh: the package lock is free after ${waited} s" >&2
}

# apt_install WHAT PACKAGE...: install Debian's PACKAGEs, saying so (WHAT: what they are for).
apt_install() {
  local what=$1
  shift
  echo "setup.sh: installing $* from Debian's packages ($what)" >&2
  wait_for_package_lock
  # apt-get waits for the lock itself too, should another package manager take it meanwhile
  ${sudo:-} apt-get -o DPkg::Lock::Timeout="$PACKAGE_LOCK_SECONDS" update -qq
  DEBIAN_FRONTEND=noninteractive ${sudo:-} apt-get -o DPkg::Lock::Timeout="$PACKAGE_LOCK_SECONDS" \
    install -y -qq "$@" >/dev/null
}
