#!/bin/sh
# The edge image's entrypoint: render edge/nginx.conf.template (the same file the local launcher renders) with
# envsubst into EDGE_DIR (a tmpfs: the root file system is read-only), then run nginx in the foreground as PID 1's
# child. Only the EDGE_* placeholders are replaced; nginx's own $variables stay.
set -eu
: "${EDGE_LISTEN:=8080}"
: "${EDGE_UPSTREAM:=gateway:8000}"
: "${EDGE_DIR:=/tmp/edge}"
: "${EDGE_ERROR_LOG:=stderr}"
EDGE_USER=""   # unprivileged: nginx runs as the image's user
export EDGE_LISTEN EDGE_UPSTREAM EDGE_DIR EDGE_ERROR_LOG EDGE_USER
mkdir -p "$EDGE_DIR"
chmod 0700 "$EDGE_DIR"
rm -f "$EDGE_DIR/http.sock"
envsubst '${EDGE_LISTEN} ${EDGE_UPSTREAM} ${EDGE_DIR} ${EDGE_ERROR_LOG} ${EDGE_USER}' \
    < /etc/edge/nginx.conf.template > "$EDGE_DIR/nginx.conf"
exec nginx -p "$EDGE_DIR" -e stderr -c "$EDGE_DIR/nginx.conf" "$@"
