#!/usr/bin/env bash
# Docker HEALTHCHECK for this image: GET /healthz of whichever server the container runs.
# The port comes from the same variable the binary reads (INGEST_BIND, WORKER_BIND,
# SANDBOX_BIND), so one image serves every binary; set HEALTHCHECK_URL when the address is set
# another way (a TOML file, WEBHOOK__…__BIND). Exit 0 healthy, 1 not. Needs bash only (no curl).
# HEALTHCHECK_PID (default 1, the container's main process) says which process to look at.
set -u

url=${HEALTHCHECK_URL:-}
if [ -z "$url" ]; then
  cmdline=$(tr '\0' ' ' <"/proc/${HEALTHCHECK_PID:-1}/cmdline" 2>/dev/null) || cmdline=
  case "$cmdline" in
    *webhook-ingest*) bind=${INGEST_BIND:-0.0.0.0:8084} ;;
    *webhook-worker*) bind=${WORKER_BIND:-0.0.0.0:9091} ;;
    *webhook-sandbox*) bind=${SANDBOX_BIND:-127.0.0.1:8180} ;;
    *) exit 0 ;; # webhookctl or a shell: a one-shot command, nothing to probe
  esac
  url="http://127.0.0.1:${bind##*:}/healthz"
fi

rest=${url#http://}
hostport=${rest%%/*}
path=/${rest#*/}
[ "$rest" = "$hostport" ] && path=/
host=${hostport%:*}
port=${hostport##*:}
[ "$host" = "$hostport" ] && port=80

status=$(
  timeout 2 bash -c '
    exec 3<>"/dev/tcp/$1/$2" || exit 1
    printf "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" "$3" "$1" >&3
    IFS= read -r line <&3 && printf "%s" "$line"
  ' _ "$host" "$port" "$path" 2>/dev/null
) || true
case "$status" in
  "HTTP/"*" 200"*) exit 0 ;;
  *) echo "healthcheck: GET $url answered '${status:-nothing}'" >&2; exit 1 ;;
esac
