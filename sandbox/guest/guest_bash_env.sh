# Sourced by the bash of every shell command before the command's own code (the guest sets
# BASH_ENV to this file: guest_shell.py). The command, and everything it starts, becomes the
# first choice of the container's OOM killer, ahead of the guest that serves the calls
# (an unprivileged process may raise its own score); and BASH_ENV leaves the command's
# environment, which is then exactly what guest_protocol.py documents.
unset BASH_ENV
{ echo 1000 >/proc/self/oom_score_adj; } 2>/dev/null
