#!/bin/sh
# Start wrapper of the v1 and v2 manifests (`command: ["/app/start.sh"]`), kept on purpose
# as the original demo had it: a place for setup steps (e.g. migrations) before the app.
#
# It starts calc WITHOUT `exec`, so this shell stays the container's main process (PID 1)
# and calc never receives the kubelet's SIGTERM: the pod only dies by SIGKILL when
# terminationGracePeriodSeconds runs out. From v3 on the manifests run the image's
# exec-form CMD (`calc serve`) instead, and SIGTERM reaches the app.
#
# The trap makes the same thing happen when this script is not PID 1 (the lab runs pods as
# plain processes, outside a PID namespace): a shell with a TERM trap keeps waiting for its
# foreground child and runs the trap only after the child has exited. In a container it
# changes nothing: PID 1 without a handler ignores SIGTERM anyway.
trap 'echo "start.sh: got SIGTERM, not passed on to calc" >&2' TERM

# E.g. run data migrations here.

calc serve "$@"
status=$?
echo "start.sh: calc exited with status $status" >&2
exit "$status"
