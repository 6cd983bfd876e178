#!/usr/bin/env bash
# CI: install a single-node SLURM (Debian's slurm-wlm) and MUNGE for tests/test_slurm.py.
# Only packages are installed here; the test fixture starts munged, slurmctld and slurmd with a
# generated slurm.conf in a temporary directory and stops them by PID afterwards.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo ".ci/slurm.sh: must run as root to install slurm-wlm and munge" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
lock=(-o DPkg::Lock::Timeout=900)  # other installers may hold the dpkg lock for a while
apt-get "${lock[@]}" update -qq
# policy-rc.d: the packages' own init scripts must not start daemons (the test starts its own)
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get "${lock[@]}" install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null
echo "slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm) and munge $(dpkg-query -W -f='${Version}' munge) installed"
