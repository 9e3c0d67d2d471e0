#!/usr/bin/env bash
# The tools tests/test_hosts.py needs to build hosts out of network namespaces: ip
# (iproute2), unshare (util-linux), socat (forwarders to the servers on 127.0.0.1) and
# iptables (the firewall rule that cuts a host off). Installs what is missing (Debian, as
# root), then checks that this machine may create a network namespace. Idempotent.
set -euo pipefail

say() { echo "hosts-setup.sh: $*" >&2; }

declare -A package=([ip]=iproute2 [unshare]=util-linux [socat]=socat [iptables]=iptables)
missing=()
for tool in "${!package[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${package[$tool]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { say "missing ${missing[*]}; run as root to install them"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt=(apt-get -o DPkg::Lock::Timeout=600)
  "${apt[@]}" install -y -q "${missing[@]}" || { "${apt[@]}" update -q && "${apt[@]}" install -y -q "${missing[@]}"; }
fi

# A namespace of our own, made and removed at once: proves the kernel and our rights allow it.
probe="bgqhprobe$$"
if ip netns add "$probe" 2>/dev/null; then
  ip netns exec "$probe" iptables -L OUTPUT >/dev/null || say "WARNING: iptables cannot run inside a namespace"
  ip netns del "$probe"
else
  say "WARNING: cannot create a network namespace (not root, or no CAP_NET_ADMIN)"
fi
