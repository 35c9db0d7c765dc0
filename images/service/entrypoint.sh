#!/bin/sh
# Entrypoint of the service image: publish the guest binary, then run the command.
#
# The worker asks the Docker engine to bind-mount SANDBOX_GUEST_DIR read-only into every
# sandbox, and the engine resolves that path on the HOST. So in a container the worker's
# guest dir must be a host directory mounted at the same path, and the guest (the static
# binary sandbox-guest, package data of sandbox.guest in the image) is copied there before the
# worker starts, when it differs, atomically (rename), so sandboxes starting meanwhile never
# see half a file. Without SANDBOX_GUEST_DIR (the API, beat), nothing is copied.
set -eu

if [ -n "${SANDBOX_GUEST_DIR:-}" ]; then
    src=$(python -c 'import sandbox.guest as g; print(g.PACKAGED_GUEST_DIR / g.GUEST_BINARY_NAME)')
    dest="$SANDBOX_GUEST_DIR/sandbox-guest"
    if [ "$src" != "$dest" ] && ! cmp -s "$src" "$dest" 2>/dev/null; then
        mkdir -p "$SANDBOX_GUEST_DIR"
        chmod 0755 "$SANDBOX_GUEST_DIR"
        cp "$src" "$dest.tmp.$$"
        chmod 0755 "$dest.tmp.$$"
        mv -f "$dest.tmp.$$" "$dest"
        echo "sandbox-entrypoint: copied the guest binary to $dest" >&2
    fi
fi

exec "$@"
