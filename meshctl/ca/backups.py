"""Copies of the CA material meshctl replaces: one helper, one layout, inside ``ca.dir``.

Everything meshctl is about to overwrite is first copied here, and only here::

    <ca.dir>/backups/
      root.backup-<time>/        root-cert.pem + root-key.pem: certs.init --force, and
                                 the old root when a root rotation finishes (step 3)
      <cluster>.backup-<time>/   a cluster's four local files: re-issue, rotation
      rotation.backup-<time>/    rotation.json of a finished rotation, when a new starts
      <cluster>/cacerts-<time>.yaml   a live cacerts Secret replaced with --force

Why inside ``ca.dir``: a copy of the root key anywhere else would be one more secret
to guard and to forget; ``ca.dir`` is the one folder the operator protects.  Why one
module: one place that knows the layout, so restoring means looking in one folder, and
root rotation finds its old root among the root backups (:func:`root_backups`)
whatever put it there.  Local files are kept by :func:`backup` as 0700 folders made
complete under a hidden name and renamed into place (:func:`meshctl.files.new_folder`):
a folder that looks whole is whole.  A live Secret (:func:`backup_secret`) is one
0600 YAML file written atomically.  meshctl never deletes a backup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from meshctl import files
from meshctl.config import CASettings

BACKUPS = "backups"
ROOT = "root"  # backups/root.backup-<time>/
ROTATION = "rotation"  # backups/rotation.backup-<time>/
SUFFIX = ".backup-"


def backups_dir(settings: CASettings) -> Path:
    """Where copies of replaced CA material go: never deleted by meshctl."""
    return settings.dir / BACKUPS


def backup(settings: CASettings, name: str, content: Mapping[str, tuple[bytes, int]]) -> Path:
    """Keep ``content`` (file name to bytes and mode) in
    ``<ca.dir>/backups/<name>.backup-<time>/``, all or nothing; returns the folder.

    Content from memory, not a copy of the disk, where the disk may already hold the
    replacement (root rotation re-run after a crash): the caller says what to keep.
    """
    return files.new_folder(backups_dir(settings) / f"{name}{SUFFIX}{files.timestamp()}",
                            content, what="cannot back up to it")


def backup_files(settings: CASettings, name: str, directory: Path,
                 only: Sequence[str] | None = None) -> Path:
    """:func:`backup` of the files in ``directory`` (only those named in ``only``),
    byte for byte and mode for mode, readable as CA material or not."""
    return backup(settings, name, files.read_folder(directory, only=only))


def backup_secret(into: Path, cluster: str, secret: dict) -> Path:
    """Keep a live ``cacerts`` Secret as YAML, 0600, in ``into/<cluster>/cacerts-<time>.yaml``
    (``into``: ``backups_dir``; its key data is the intermediate's, never the root's)."""
    keep = {"apiVersion": "v1", "kind": "Secret", "type": secret.get("type", "Opaque"),
            "metadata": {k: v for k, v in secret["metadata"].items()
                         if k in ("name", "namespace", "labels", "annotations")},
            "data": secret.get("data") or {}}
    path = into / cluster / f"cacerts-{files.timestamp()}.yaml"
    return files.write_atomic(path, yaml.safe_dump(keep), mode=files.PRIVATE)


def root_backups(settings: CASettings) -> list[Path]:
    """Every ``root.backup-<time>/`` folder, oldest first."""
    folder = backups_dir(settings)
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.glob(f"{ROOT}{SUFFIX}*") if d.is_dir())
