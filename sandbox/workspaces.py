"""Workspaces on the host: checking, fingerprinting and materialising a repository, a
directory or a tarball, so an environment's derived image can carry it.

Git history is scrubbed to the base commit: agents were seen reading the future fix with
`git log --all`, and a reward earned that way is a hacked reward. The materialised
repository is a shallow clone holding only the base commit's objects, with no remotes, no
other refs, no reflog, no stash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

from .domain.errors import WorkspaceForbidden, WorkspaceInvalid

MAX_LISTED_FILES = 200_000
GIT_TIMEOUT_S = 600


def confine(path: str, roots: list[Path]) -> Path:
    """Resolve `path` (following every symlink) and require it to lie under an allowed root.

    Raises WorkspaceForbidden; the resolved path is what is used afterwards, so a symlink
    swapped in later cannot point the service elsewhere.
    """
    if not roots:
        raise WorkspaceForbidden("no workspace roots are configured (SANDBOX_WORKSPACE_ROOTS)")
    if "\x00" in path or not os.path.isabs(path):
        raise WorkspaceForbidden("the workspace path must be an absolute host path")
    resolved = Path(os.path.realpath(path))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if resolved == real_root or real_root in resolved.parents:
            return resolved
    raise WorkspaceForbidden(f"{path} is outside the allowed workspace roots")


def _git(*args: str, cwd: Path | None = None) -> str:
    # safe.directory: the repository may belong to another user than the service.
    cmd = ["git", "-c", "safe.directory=*", *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    if proc.returncode != 0:
        raise WorkspaceInvalid(f"git {args[0]} failed: {proc.stderr.strip()[:500]}")
    return proc.stdout


def resolve_commit(repo: Path, commit: str) -> str:
    """The full sha of `commit` (a sha, tag or branch) in `repo`. Raises WorkspaceInvalid."""
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise WorkspaceInvalid(f"{repo} is not a git repository")
    if not commit or commit.startswith("-"):
        raise WorkspaceInvalid("a git workspace needs a commit")
    return _git("-C", str(repo), "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}").strip()


def list_files(kind: str, path: Path, commit: str | None = None) -> list[str]:
    """Files of the workspace at its base (relative paths), for the grader's existence check."""
    if kind == "git":
        assert commit is not None
        out = _git("-C", str(path), "ls-tree", "-r", "-z", "--name-only", commit)
        return [p for p in out.split("\0") if p][:MAX_LISTED_FILES]
    if kind == "dir":
        files = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d != ".git"] if root == str(path) else dirs
            for name in names:
                files.append(os.path.relpath(os.path.join(root, name), path))
                if len(files) >= MAX_LISTED_FILES:
                    return files
        return files
    with _open_tar(path) as tar:
        return [m.name.removeprefix("./") for m in tar.getmembers() if m.isfile() or m.issym()][:MAX_LISTED_FILES]


def fingerprint(kind: str, path: Path, commit: str | None = None) -> str:
    """What the workspace's content is addressed by: the commit sha, or a hash of the content."""
    if kind == "git":
        assert commit is not None
        return commit
    h = hashlib.sha256()
    if kind == "tar":
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            st = os.lstat(full)
            h.update(f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode())
    return h.hexdigest()


def materialise(kind: str, source: Path, dest: Path, commit: str | None = None) -> None:
    """Write the workspace's files into `dest` (which must not exist yet)."""
    if kind == "git":
        assert commit is not None
        _scrubbed_checkout(source, commit, dest)
    elif kind == "dir":
        _copy_tree(source, dest)
    else:
        dest.mkdir(parents=True)
        with _open_tar(source) as tar:
            tar.extractall(dest, filter="data")  # refuses absolute paths, '..', devices


def _scrubbed_checkout(repo: Path, commit: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    _git("init", "-q", "--initial-branch=main", str(dest))
    # Fetch exactly one commit, shallow, by sha: nothing reachable from other refs, no tags.
    upload_pack = "git -c safe.directory=* -c uploadpack.allowAnySHA1InWant=true upload-pack"
    _git(
        "-C",
        str(dest),
        "fetch",
        "-q",
        "--depth=1",
        "--no-tags",
        f"--upload-pack={upload_pack}",
        f"file://{repo}",
        commit,
    )
    _git("-C", str(dest), "update-ref", "refs/heads/main", commit)
    _git("-C", str(dest), "reset", "-q", "--hard", commit)
    git_dir = dest / ".git"
    for leftover in ("FETCH_HEAD", "ORIG_HEAD", "logs", "hooks", "description"):
        target = git_dir / leftover
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    (git_dir / "hooks").mkdir()
    _git("-C", str(dest), "reflog", "expire", "--expire=now", "--all")
    _git("-C", str(dest), "gc", "-q", "--prune=now")


def _copy_tree(source: Path, dest: Path) -> None:
    """Copy regular files, directories and symlinks (as links); skip FIFOs, sockets, devices."""
    dest.mkdir(parents=True)
    for root, dirs, names in os.walk(source):
        rel = os.path.relpath(root, source)
        target_root = dest / rel if rel != "." else dest
        for d in dirs:
            full = os.path.join(root, d)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target_root / d)
            else:
                (target_root / d).mkdir()
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in names:
            full = os.path.join(root, name)
            mode = os.lstat(full).st_mode
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(full), target_root / name)
            elif stat.S_ISREG(mode):
                shutil.copy2(full, target_root / name)


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except (tarfile.TarError, OSError) as exc:
        raise WorkspaceInvalid(f"{path} is not a readable tar archive: {exc}") from exc
