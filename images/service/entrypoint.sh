#!/bin/sh
# Entrypoint of the service image: publish the guest executor, then run the command.
#
# The worker asks the Docker engine to bind-mount SANDBOX_GUEST_DIR read-only into every
# sandbox, and the engine resolves that path on the HOST. So in a container the worker's
# guest dir must be a host directory mounted at the same path, and guest.py (shipped in the
# image, in the sandbox package) is copied there before the worker starts. The copy is
# atomic (rename), so sandboxes starting meanwhile never see half a file. Without
# SANDBOX_GUEST_DIR (the API, beat), nothing is copied.
set -eu

if [ -n "${SANDBOX_GUEST_DIR:-}" ]; then
    src=$(python -c 'import pathlib, sandbox.guest as g; print(pathlib.Path(g.__file__).parent / "guest.py")')
    dest="$SANDBOX_GUEST_DIR/guest.py"
    if [ "$src" != "$dest" ] && ! cmp -s "$src" "$dest" 2>/dev/null; then
        mkdir -p "$SANDBOX_GUEST_DIR"
        chmod 0755 "$SANDBOX_GUEST_DIR"
        cp "$src" "$dest.tmp.$$"
        chmod 0644 "$dest.tmp.$$"
        mv -f "$dest.tmp.$$" "$dest"
        echo "sandbox-entrypoint: copied guest.py to $SANDBOX_GUEST_DIR" >&2
    fi
fi

exec "$@"
