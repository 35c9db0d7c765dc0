"""The guest: the program in every sandbox container that runs the rollout's calls.

It is the native binary built from native/ (Go, standard library only, by native/build.sh);
guest_protocol.py and guest_protocol_stream.py hold the protocol the worker speaks to it.
"""

from pathlib import Path

GUEST_BINARY_NAME = "sandbox-guest"
# Where build.sh puts the binary; the default of SANDBOX_GUEST_DIR, and what the service
# image's entrypoint and the worker pod's init container copy out of the installed package.
PACKAGED_GUEST_DIR = Path(__file__).resolve().parent / "native" / "bin"
