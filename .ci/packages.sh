#!/usr/bin/env bash
# CI: every Debian package the run needs, in one apt transaction (one `apt-get update`, one download
# and unpack pass, one round of dpkg triggers) instead of four: chromium (tests/test_browser.py),
# slurm-wlm + munge (tests/test_slurm.py), docker.io + debootstrap (.ci/container.sh), mricron-data
# (Colin27 and AAL for the fidelity tests). The per-tool scripts (.ci/chromium.sh, .ci/slurm.sh,
# .ci/container.sh, scripts/install.sh) keep their own installs for use on their own; after this one
# they find their tools and install nothing.
set -euo pipefail
pkgs=(chromium fonts-dejavu-core slurm-wlm munge docker.io debootstrap debian-archive-keyring mricron-data)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} = 0 ]; then echo "debian packages: all present"; exit 0; fi
if [ "$(id -u)" != 0 ]; then echo ".ci/packages.sh: must run as root to install ${missing[*]}" >&2; exit 1; fi
t0=$(date +%s)
export DEBIAN_FRONTEND=noninteractive
lock=(-o DPkg::Lock::Timeout=900)  # another installer may hold the dpkg lock for a while
# policy-rc.d: munge's and slurm's init scripts must not start daemons (tests/test_slurm.py starts its
# own, by PID), as .ci/slurm.sh does; docker's init script still runs, as it did when .ci/container.sh
# installed docker.io on its own: on a machine without systemd it is what mounts the cgroup hierarchies
# that the engine .ci/container.sh starts needs to run containers.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  cat > /usr/sbin/policy-rc.d <<'POLICY'
#!/bin/sh
while [ "${1#-}" != "$1" ]; do shift; done   # options (--quiet, --list) come before the script name
case "$1" in docker) exit 0 ;; *) exit 101 ;; esac
POLICY
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get "${lock[@]}" update -qq
apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "debian packages (${missing[*]}): $(( $(date +%s) - t0 )) s"
