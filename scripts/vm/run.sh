#!/usr/bin/env bash
# scripts/vm/run.sh 'COMMAND': boots the test VM (Debian's kernel, the host's own root read-only
# under a tmpfs overlay, systemd as PID 1, pure cgroup v2), runs COMMAND as root with bash in the
# project directory (shared read-write at the same path), streams its stdout and stderr, and
# exits with its exit code: 125 when the VM ended without a result, 124 on CLAWPEN_VM_TIMEOUT.
# Writes the boot and command durations to $CLAWPEN_VM_TIMES when that is set.
# Settings: CLAWPEN_VM_MEM (MiB, default 2048), CLAWPEN_VM_TIMEOUT (s, default 900),
# CLAWPEN_VM_VERBOSE=1 (console to stderr), CLAWPEN_VM_KEEP=1 (keep the run directory),
# CLAWPEN_VM_QEMU (the qemu binary, default qemu-system-x86_64).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd -P)
cache=${CLAWPEN_VM_CACHE:-$project/.build/vm}
(($# == 1)) || { echo "usage: $0 'command'" >&2; exit 2; }
qemu_bin=${CLAWPEN_VM_QEMU:-qemu-system-x86_64}
command -v "$qemu_bin" >/dev/null || { echo "vm: $qemu_bin is not installed (scripts/install-deps installs qemu-system-x86): the VM cannot start" >&2; exit 125; }
"$here/build-image.sh" >&2 || { echo "vm: cannot build the VM image" >&2; exit 125; }

# Units that only slow the boot of a throw-away VM without udev, network or persistent state.
mask="systemd-udev-trigger.service systemd-udev-settle.service systemd-udevd.service
systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-random-seed.service
systemd-timesyncd.service systemd-pstore.service apparmor.service systemd-journal-flush.service
systemd-update-utmp.service systemd-hwdb-update.service systemd-firstboot.service
systemd-machine-id-commit.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount
keyboard-setup.service console-setup.service systemd-ask-password-console.path
systemd-ask-password-wall.path e2scrub_reap.service ldconfig.service timers.target cron.service
modprobe@configfs.service modprobe@dm_mod.service modprobe@fuse.service modprobe@loop.service
modprobe@drm.service modprobe@efi_pstore.service kmod-static-nodes.service
systemd-modules-load.service systemd-remount-fs.service systemd-sysusers.service
systemd-tmpfiles-setup-dev.service dev-hugepages.mount sys-kernel-debug.mount
sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount
systemd-repart.service systemd-pcrphase-sysinit.service systemd-pcrphase.service"

mkdir -p "$cache/runs"
run=$(mktemp -d "$cache/runs/run.XXXXXX") || exit 125
ctl=$run/ctl
mkdir -p "$ctl/units"
cp "$here/guest/clawpen-vm.target" "$here/guest/clawpen-vm-run.service" "$ctl/units/"
cp "$here/guest/run-command.sh" "$ctl/"
printf '%s\n' "$1" > "$ctl/cmd.sh"
{
  printf 'VM_WORKDIR=%q\n' "$project"
  printf 'VM_PATH=%q\n' "$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  printf 'VM_MASK=%q\n' "$(echo $mask)"
} > "$ctl/config"
: > "$ctl/stdout"; : > "$ctl/stderr"
virtfs_path() { printf '%s' "${1//,/,,}"; } # qemu option values double their commas

qemu=("$qemu_bin" -accel tcg,thread=multi -smp 1 -m "${CLAWPEN_VM_MEM:-2048}"
  -display none -monitor none -serial "file:$run/console.log" -no-reboot -nic none -nodefaults
  -kernel "$cache/vmlinux" -initrd "$cache/initramfs.cpio.gz"
  -append "console=ttyS0 panic=-1 loglevel=4 systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all systemd.unit=clawpen-vm.target systemd.show_status=auto systemd.journald.forward_to_console=0"
  -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
  -virtfs "local,path=$(virtfs_path "$ctl"),mount_tag=ctl,security_model=none,multidevs=remap"
  -virtfs "local,path=$(virtfs_path "$project"),mount_tag=work,security_model=none,multidevs=remap")

t0=$(date +%s.%N)
timeout --kill-after=5 "${CLAWPEN_VM_TIMEOUT:-900}" "${qemu[@]}" > "$run/qemu.log" 2>&1 &
qpid=$!
trap 'kill $qpid 2>/dev/null; echo "vm: interrupted; logs in $run" >&2; exit 130' INT TERM HUP
tail -n +1 -F --pid=$qpid -s 0.2 "$ctl/stdout" 2>/dev/null &
t_out=$!
tail -n +1 -F --pid=$qpid -s 0.2 "$ctl/stderr" >&2 2>/dev/null &
t_err=$!
t_con=
if [[ ${CLAWPEN_VM_VERBOSE:-0} == 1 ]]; then
  tail -n +1 -F --pid=$qpid -s 0.2 "$run/console.log" 2>/dev/null | sed -u 's/^/[console] /' >&2 &
  t_con=$!
fi
wait $qpid
qrc=$?
t3=$(date +%s.%N)
wait $t_out $t_err $t_con 2>/dev/null

# The 9p server stamps the guest's files with host time: boot = until the command started.
mtime() { [[ -e $1 ]] && stat -c %.9Y "$1"; }
ts=$(mtime "$ctl/uptime_at_start"); te=$(mtime "$ctl/rc")
if [[ -n ${CLAWPEN_VM_TIMES:-} ]]; then
  {
    [[ -n $ts ]] && awk -v a="$ts" -v b="$t0" 'BEGIN { printf "boot_s=%.1f\n", a - b }'
    [[ -n $ts && -n $te ]] && awk -v a="$te" -v b="$ts" 'BEGIN { printf "command_s=%.1f\n", a - b }'
    awk -v a="$t3" -v b="$t0" 'BEGIN { printf "total_s=%.1f\n", a - b }'
  } > "$CLAWPEN_VM_TIMES"
fi
if [[ -e $ctl/rc ]]; then
  rc=$(cat "$ctl/rc")
  [[ ${CLAWPEN_VM_KEEP:-0} == 1 ]] || rm -rf "$run"
  exit "$rc"
fi
if ((qrc == 124 || qrc == 137)); then echo "vm: killed after ${CLAWPEN_VM_TIMEOUT:-900} s; logs in $run" >&2; rc=124
else echo "vm: the VM ended (qemu exit $qrc) without a result; logs in $run" >&2; rc=125; fi
tail -n 20 "$run/qemu.log" >&2
echo "---- console (last 40 lines) ----" >&2; tail -n 40 "$run/console.log" >&2
exit $rc
