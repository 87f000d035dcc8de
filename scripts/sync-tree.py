"""Copies a git work tree's files (tracked, and untracked ones git does not ignore) into another
directory, writing only the files whose content differs and removing what the source no longer
has: the copy's unchanged files keep their times, so that builds taking their sources from it
stay incremental whichever clone it was made from.

    python3 scripts/sync-tree.py <git work tree> <copy>

scripts/test.sh builds Zephyr's samples for the conformance suite with the module from such a
copy (a fresh clone, as CI makes, would otherwise look all new to them).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path


def sync(src: Path, dst: Path) -> int:
    """Makes `dst` hold `src`'s files; returns how many it wrote."""
    names = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, check=True).stdout
    # Regular files only (a tracked file deleted in the work tree is not copied, and goes).
    files = {n.decode() for n in names.split(b"\0") if n}
    files = {n for n in files if not (src / n).is_symlink() and (src / n).is_file()}
    wrote = 0
    for name in sorted(files):
        s, d = src / name, dst / name
        # A directory of the copy where the source now has a file, or a file where it has a
        # directory: the copy's goes.
        for parent in reversed(Path(name).parents[:-1]):
            q = dst / parent
            if q.is_symlink() or (q.exists() and not q.is_dir()):
                q.unlink()
        data = s.read_bytes()
        if d.is_file() and not d.is_symlink() and d.read_bytes() == data:
            if (d.stat().st_mode & 0o777) != (s.stat().st_mode & 0o777):
                d.chmod(s.stat().st_mode & 0o777)
            continue
        d.parent.mkdir(parents=True, exist_ok=True)
        if d.is_symlink() or d.is_dir():
            shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()
        tmp = d.with_name(d.name + ".sync-tmp")
        tmp.write_bytes(data)
        tmp.chmod(s.stat().st_mode & 0o777)
        os.replace(tmp, d)
        wrote += 1
    # What the source no longer has (files first, then the directories left empty).
    for root, dirs, fs in os.walk(dst, topdown=False):
        for f in fs:
            p = Path(root) / f
            rel = str(p.relative_to(dst))
            if rel not in files and rel != ".ivnet-sync-tree":
                p.unlink()
        for dname in dirs:
            p = Path(root) / dname
            if not p.is_symlink() and not any(p.iterdir()):
                p.rmdir()
    return wrote


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    if not (src / ".git").exists():
        sys.exit(f"sync-tree: {src} is not a git work tree")
    if dst.resolve() == src or src in dst.resolve().parents:
        sys.exit(f"sync-tree: the copy {dst} must be outside {src}")
    # Only a directory this script made is ever pruned: it is empty, or holds its marker.
    marker = dst / ".ivnet-sync-tree"
    if dst.exists() and any(dst.iterdir()) and not marker.is_file():
        sys.exit(f"sync-tree: {dst} is not empty and was not made by sync-tree: left alone")
    dst.mkdir(parents=True, exist_ok=True)
    marker.touch()
    print(f"sync-tree: {sync(src, dst)} file(s) written to {dst}")
