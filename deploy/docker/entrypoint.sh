#!/bin/sh
# The container's entry point.
#   serve    (default) migrate and install the built-ins once per database, then serve
#   migrate  only that first part (a Kubernetes Job, a Compose one-shot service), then exit
#   anything else runs as a command, e.g. `modelport models list`
# PORT (set by many container hosts) wins over MODELPORT_PORT.
set -eu

if [ -n "${PORT:-}" ]; then
  MODELPORT_PORT="$PORT"
  export MODELPORT_PORT
fi

case "${1:-serve}" in
  serve)
    [ "$#" -gt 0 ] && shift
    python3 /opt/modelport/bootstrap.py
    # exec: the server is PID 1's direct replacement and gets SIGTERM for a graceful stop.
    exec modelport serve "$@"
    ;;
  migrate)
    exec python3 /opt/modelport/bootstrap.py
    ;;
  *)
    exec "$@"
    ;;
esac
