#!/bin/sh
# Entrypoint of the service image: publish the guest executor, then run the command.
#
# The worker asks the Docker engine to bind-mount SANDBOX_GUEST_DIR read-only into every
# sandbox, and the engine resolves that path on the HOST. So in a container the worker's
# guest dir must be a host directory mounted at the same path, and the guest (every *.py of
# the sandbox package's guest/ directory in the image: guest.py, guest_protocol.py and the
# other guest_*.py it imports) is copied there before the worker starts. Each file that
# differs is copied atomically (rename), the entry point guest.py last, so sandboxes starting
# meanwhile never see half a file. Without SANDBOX_GUEST_DIR (the API, beat), nothing is copied.
set -eu

if [ -n "${SANDBOX_GUEST_DIR:-}" ]; then
    src=$(python -c 'import pathlib, sandbox.guest as g; print(pathlib.Path(g.__file__).parent)')
    if [ "$src" != "$SANDBOX_GUEST_DIR" ]; then
        changed=""
        for f in "$src"/guest*.py "$src"/guest*.sh; do
            name=${f##*/}
            dest="$SANDBOX_GUEST_DIR/$name"
            if ! cmp -s "$f" "$dest" 2>/dev/null; then
                mkdir -p "$SANDBOX_GUEST_DIR"
                chmod 0755 "$SANDBOX_GUEST_DIR"
                cp "$f" "$dest.tmp.$$"
                chmod 0644 "$dest.tmp.$$"
                changed="$changed $name"
            fi
        done
        for name in $changed; do  # the modules first, then the entry point that imports them
            [ "$name" = guest.py ] || mv -f "$SANDBOX_GUEST_DIR/$name.tmp.$$" "$SANDBOX_GUEST_DIR/$name"
        done
        for name in $changed; do
            [ "$name" != guest.py ] || mv -f "$SANDBOX_GUEST_DIR/$name.tmp.$$" "$SANDBOX_GUEST_DIR/$name"
        done
        if [ -n "$changed" ]; then
            echo "sandbox-entrypoint: copied$changed to $SANDBOX_GUEST_DIR" >&2
        fi
    fi
fi

exec "$@"
