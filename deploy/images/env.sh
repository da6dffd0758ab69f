# Sourced by deploy/images/*.sh (and read by the image test): podman and buildah settings for
# this project, without touching the user's /etc/containers or ~/.config/containers.
#
# Writes .tools/containers/containers.conf for this host (again only when it changed) and exports
# CONTAINERS_CONF pointing at it; podman and buildah then read that file instead of the system's:
#   runtime = "runc"            crun (podman's other runtime) fails on hosts with hybrid cgroups
#                               (v1 controllers plus a v2 mount), as on the reference machine;
#   cgroup_manager = "cgroupfs" no systemd is needed (rootful podman; rootless on cgroup v2 with
#                               systemd would want "systemd");
#   default_ulimits             podman's default nofile for root (1048576) exceeds hosts whose
#                               hard limit is lower (20000 on the reference machine), and with
#                               any ulimit given its nproc becomes 1048576, beyond what runc can
#                               set (32768 there): no container starts. Here: the host's hard
#                               limits (nofile at most 65536, compose's value; nproc at most
#                               kernel.pid_max). A `--ulimit` flag replaces this whole list;
#   stop_timeout = 30           `podman stop` waits 10 s by default, less than the gateway's drain
#                               (GATEWAY_SHUTDOWN_TIMEOUT, 15 s by default): the drain would be cut
#                               by SIGKILL;
#   network_backend = "netavark" only where netavark is installed (apt: netavark aardvark-dns):
#                               its DNS lets compose services find each other by name, which
#                               Debian 12's CNI setup cannot (no dnsname plugin). The image test
#                               uses the host network and needs neither.
# Without this file, pass the same as flags: --runtime runc --cgroup-manager cgroupfs (global
# flags of podman), --ulimit nofile=N:N --ulimit nproc=M:M on `podman run`, -t 30 on `podman stop`.
# shellcheck shell=bash

_images_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
_nofile="$(ulimit -Hn)"
if [ "$_nofile" = unlimited ] || [ "$_nofile" -gt 65536 ]; then _nofile=65536; fi
# nproc: also at most kernel.pid_max, the highest value runc could set here (conmon, which
# starts it, runs with that hard limit).
_nproc="$(ulimit -Hu)"
_pid_max="$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)"
if [ "$_nproc" = unlimited ] || [ "$_nproc" -gt "$_pid_max" ]; then _nproc="$_pid_max"; fi
CONTAINERS_CONF="$_images_root/.tools/containers/containers.conf"
_conf_text="# Written by deploy/images/env.sh for this host; see there. Delete it to have it rewritten.
[containers]
default_ulimits = [\"nofile=$_nofile:$_nofile\", \"nproc=$_nproc:$_nproc\"]

[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
stop_timeout = 30"
if [ -x /usr/lib/podman/netavark ] && [ -x /usr/lib/podman/aardvark-dns ]; then
  _conf_text="$_conf_text

[network]
network_backend = \"netavark\""
fi
if [ "$(cat "$CONTAINERS_CONF" 2>/dev/null)" != "$_conf_text" ]; then
  mkdir -p "$(dirname "$CONTAINERS_CONF")"
  printf '%s\n' "$_conf_text" >"$CONTAINERS_CONF"
fi
export CONTAINERS_CONF
unset _images_root _nofile _nproc _pid_max _conf_text
