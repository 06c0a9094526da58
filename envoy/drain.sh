#!/usr/bin/env bash
# Run before stopping Envoy (Ctrl-C, SIGTERM, an interrupted `func-e run`), so that no queued hit
# is lost: stops Envoy's listeners, then waits until the Matomo filter has sent (or dropped and
# counted) every hit it queued. On a signal Envoy sends the plugin's last bulk call but exits
# without waiting for its answer, and the call leaves only on a keep-alive connection to Matomo
# that is already open (docs/deployment.md, "Stopping Envoy").
#
#   envoy/drain.sh [ADMIN_ADDRESS]      # default 127.0.0.1:9901; then stop Envoy
#
# Queued hits leave within `flush_interval` (1 s by default) while Matomo answers; a failing
# batch is retried for up to `retry_window`. DRAIN_TIMEOUT (seconds, default 60) bounds the wait.
# The count is exact unless hits were dropped for a full queue, which makes the wait end early.
set -euo pipefail
admin=${1:-127.0.0.1:9901}
timeout=${DRAIN_TIMEOUT:-60}

curl -sf -X POST "http://$admin/drain_listeners" >/dev/null
deadline=$((SECONDS + timeout))
while :; do
  # Hits queued (requests_tracked) but neither accepted by Matomo nor dropped yet.
  left=$(curl -sfG "http://$admin/stats" \
      --data-urlencode 'filter=^wasmcustom\.matomo\.(requests_tracked|hits_sent|hits_dropped)$' |
    awk '/requests_tracked/ { n += $2 } /hits_sent|hits_dropped/ { n -= $2 } END { print n + 0 }')
  if [ "$left" -le 0 ]; then
    echo "listeners stopped, no hit left to send: stop Envoy now"
    exit 0
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "listeners stopped, but $left hits are still queued after ${timeout}s (is Matomo answering?)" >&2
    exit 1
  fi
  sleep 0.2
done
