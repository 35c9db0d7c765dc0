#!/usr/bin/env bash
# Build the native guest: a static binary (no libc, no runtime dependency in the image) at
# sandbox/guest/native/bin/sandbox-guest, from the standard library only, offline.
#   build.sh         build it when a .go file or go.mod is newer than the binary (else nothing)
#   build.sh test    go vet, gofmt and the Go unit tests (tests/unit/test_guest.py runs it)
# Go's caches live under the project's .run/ (gitignored), never in $HOME; GOPROXY=off: a
# dependency (there is none) could not be fetched. Needs Debian's golang-go (Go >= 1.19),
# which deploy/install.sh installs. Prints one progress line.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$HERE/../../.." && pwd -P)"
BIN="$HERE/bin/sandbox-guest"
GO_RUN="$ROOT/.run/go"

log() { printf '[native-guest] %s\n' "$*"; }
die() {
    log "ERROR: $*" >&2
    exit 1
}

command -v go >/dev/null 2>&1 ||
    die "go not found: install Debian's golang-go (deploy/install.sh does), then run $0 again"

export GOCACHE="$GO_RUN/cache" GOPATH="$GO_RUN/path" GOMODCACHE="$GO_RUN/mod" GOTMPDIR="$GO_RUN/tmp"
export GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local GOTELEMETRY=off GOENV=off GOFLAGS='' GO111MODULE=on
export CGO_ENABLED=0
mkdir -p "$GOCACHE" "$GOPATH" "$GOMODCACHE" "$GOTMPDIR"
cd "$HERE"

if [[ ${1:-} == test ]]; then
    unformatted=$(gofmt -l .)
    [[ -z $unformatted ]] || die "not gofmt-formatted: $unformatted"
    go vet ./...
    go test -count=1 ./... >"$GOTMPDIR/test.log" 2>&1 || {
        cat "$GOTMPDIR/test.log" >&2
        die "go test failed"
    }
    log "go vet, gofmt and go test passed"
    exit 0
fi

# Up to date: the binary exists and no source is newer.
if [[ -x $BIN ]] && [[ -z $(find . -path ./bin -prune -o \( -name '*.go' -o -name go.mod -o -path './pytest_plugin/*.py' \) -newer "$BIN" -print -quit) ]]; then
    log "up to date: $BIN"
    exit 0
fi
mkdir -p "$HERE/bin"
tmp="$BIN.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -ldflags="-s -w" -o "$tmp" .
mv -f "$tmp" "$BIN"
log "built $BIN ($(go version | awk '{print $3}'), $(($(stat -c %s "$BIN") / 1024)) KiB)"
