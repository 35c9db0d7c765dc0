"""pytest plugin the grader loads into every test run (`-p sandbox_results`: native/tests.go,
which embeds this file in the guest binary).

It writes one JSON line per test phase to the pipe $SANDBOX_REPORTS_FD (the guest reads the
other end), as pytest decides it, plus a first line when the session starts and a last one
when it ends; the grader ignores whatever comes after that last line.
The grader takes a test as passed only when its call phase passed and no phase failed,
and a run without the last line as one that did not finish (the agent's code ended the
process early, e.g. with os._exit(0) at import). Stdlib and pytest's hooks only: it runs in
any image that has pytest.
"""

import json
import os

_FD = os.environ.get("SANDBOX_REPORTS_FD")
os.environ.pop("SANDBOX_REPORTS_FD", None)  # the tests' own subprocesses need not see it


def _write(record):
    if _FD is None:
        return
    line = (json.dumps(record) + "\n").encode()
    try:
        while line:  # one write per line; a pipe takes up to 64 KiB at once
            line = line[os.write(int(_FD), line) :]
    except (OSError, ValueError):
        pass  # the channel is gone: the run then counts as unfinished


def pytest_sessionstart(session):
    _write({"event": "start"})


def pytest_collectreport(report):
    if report.failed:  # a module that does not import: every test in it is an error
        _write({"event": "collect_error", "nodeid": report.nodeid})


def pytest_runtest_logreport(report):
    outcome = report.outcome
    if getattr(report, "wasxfail", None) is not None:
        outcome = "xfailed" if report.skipped else "xpassed"
    _write({"event": "test", "nodeid": report.nodeid, "when": report.when, "outcome": outcome})


def pytest_sessionfinish(session, exitstatus):
    _write({"event": "finish", "exitstatus": int(exitstatus)})
