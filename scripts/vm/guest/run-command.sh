#!/bin/bash
# Runs in the VM as clawpen-vm-run.service: sets the clock from the host, runs /vm/cmd.sh in the
# project directory, leaves stdout, stderr and the exit code in /vm for the host.
. /vm/config
# The emulated RTC has 1 s resolution: take the host's time from a file the 9p server stamps.
: > /vm/.clock
date -s "@$(stat -c %.9Y /vm/.clock)" > /dev/null
cut -d' ' -f1 /proc/uptime > /vm/uptime_at_start
cd "$VM_WORKDIR" || exit 1
export HOME=/root LANG=C.UTF-8 TERM=dumb PATH="$VM_PATH"
[[ -r /vm/env ]] && . /vm/env
/bin/bash /vm/cmd.sh > /vm/stdout 2> /vm/stderr < /dev/null
echo $? > /vm/rc.tmp && mv /vm/rc.tmp /vm/rc
sync
